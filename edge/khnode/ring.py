"""The ring buffer: messages waiting for the gateway's ack, one file each, kept in sequence order on flash.

A file is named after its sequence number (16 hex digits, so names sort like numbers) and its channel
(``.r`` readings, ``.a`` alarms). Messages are sent oldest first and deleted only when the gateway acks them. When
the ring is full the oldest readings message is dropped (alarms only when nothing else is left) and counted.
"""

import os

CHANNELS = {"r": "up/readings", "a": "up/alarms"}


class Ring:
    def __init__(self, path, capacity):
        self.path = path
        self.capacity = capacity
        try:
            os.mkdir(path)
        except OSError:
            pass

    def names(self):
        """Every waiting message, oldest first."""
        return sorted(n for n in os.listdir(self.path) if len(n) == 18 and n[17] in CHANNELS)

    def put(self, seq, channel, payload):
        """Store a message; returns how many older messages were dropped to make room."""
        names = self.names()
        dropped = 0
        while len(names) >= self.capacity:
            victim = names[0]
            for name in names:
                if name[17] == "r":
                    victim = name
                    break
            os.remove(self.path + "/" + victim)
            names.remove(victim)
            dropped += 1
        name = "%016x.%s" % (seq, channel)
        tmp = self.path + "/new.tmp"
        with open(tmp, "wb") as f:
            f.write(payload)
        os.rename(tmp, self.path + "/" + name)
        return dropped

    def read(self, name):
        """``(seq, topic suffix, payload)`` of a waiting message."""
        with open(self.path + "/" + name, "rb") as f:
            return int(name[:16], 16), CHANNELS[name[17]], f.read()

    def ack(self, seq):
        """Forget message ``seq``; False if it was not waiting (a repeated ack)."""
        for channel in CHANNELS:
            try:
                os.remove("%s/%016x.%s" % (self.path, seq, channel))
                return True
            except OSError:
                pass
        return False
