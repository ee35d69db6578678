"""One wake of the node: measure, decide by the crisis rhythm, queue, send what waits, read the downlink, sleep.

Files on the device (see docs/edge.md): ``node.json`` (settings, written by the flash tool), ``certs/`` (DER),
``data/`` (boot counter, state, remote settings, the ring of unacknowledged messages).
"""

import gc
import os
import sys

from khnode import board, config, filters, rhythm, senml, stages, store
from khnode.ring import Ring

CONFIG = "node.json"
DATA = "data"
RETRY_S = 3600  # sleep after a fatal configuration problem, then try again
BOOT_EPOCH = 1700000000


class Node:
    """The node's settings, state, sensors and ring for one boot; ``cycle()`` is one wake."""

    def __init__(self, root=""):
        self.root = root
        self.data = root + DATA
        try:
            os.mkdir(self.data)
        except OSError:
            pass
        # never below the clock's seconds since 2023-11-14, so a lost counter file cannot make sequence numbers go
        # back; the counter stays below 2**31 (the wire's 63-bit seq) until 2091
        clock = board.now()
        self.boot = store.next_boot(self.data + "/boot", clock - BOOT_EPOCH if clock > BOOT_EPOCH else 0)
        self.count = 0
        self.remote = store.load(self.data + "/remote.json")
        self.cfg, self.problems = config.load(root + CONFIG, self.remote.get("delta"))
        for problem in self.problems:
            print("config:", problem)
        for key in ("ca", "cert", "key"):
            if not self.cfg[key].startswith("/"):
                self.cfg[key] = root + self.cfg[key]
        self.wdt = board.Watchdog(self.cfg["wdt_ms"])
        self.state = store.load(self.data + "/state.json")
        self.ring = Ring(self.data + "/ring", self.cfg["ring_max"])
        from khnode import sensors

        self.sensors = sensors.make(self.cfg)
        self.battery = sensors.battery_volts

    def seq(self):
        """Boot counter in the high 32 bits, a counter in the low ones: increasing across reboots."""
        self.count += 1
        return self.boot << 32 | self.count

    def measure(self):
        """``(level of the first sensor or None, SenML records)``; updates each sensor's filter state."""
        cfg, st = self.cfg, self.state
        records = []
        level = None
        filt = st.setdefault("filters", {})
        for quantity, sensor in self.sensors:
            self.wdt.feed()
            last, same = filt.get(quantity, (None, 0))
            value, flags, same = filters.assess(sensor.burst(cfg["samples"]), last, same, cfg["spike_m"], cfg["stuck_n"])
            filt[quantity] = (value if value is not None else last, same)
            if value is not None:
                records.append(senml.record(quantity, value, "m"))
                if level is None:
                    level = value
            records.append(senml.record(quantity + ".flags", flags))
        volts = self.battery(cfg["battery"])
        if volts is not None:
            records.append(senml.record("battery", volts, "V"))
        return level, records

    def cycle(self):
        """Everything one wake does before sleeping; returns the seconds to sleep."""
        cfg, st = self.cfg, self.state
        level, records = self.measure()
        before = st.get("stage", 0)
        thresholds = [cfg["levels"][name] for name in stages.NAMES]
        after = stages.stage(level, thresholds, before, cfg["hysteresis_m"])
        flood = cfg["flood"] or st.get("flood_left_s", 0) > 0
        quiet_s = st.get("quiet_s", cfg["heartbeat_s"])  # a node's first wake reports at once
        report, alarm, sleep_s = rhythm.plan(before, after, cfg, quiet_s, flood, st.pop("force", False))
        st["stage"] = after
        now = board.now()
        if report and now < senml.MIN_EPOCH:
            print("clock not set: reading not queued")
            report = False
        if report:
            records.append(senml.record("stage", after))
            if alarm:
                records.append(senml.record("stage.from", before))
                records.append(senml.record("alarm", stages.alarm_code(before, after)))
            if st.get("dropped"):
                records.append(senml.record("dropped", st["dropped"]))
            if self.problems:
                records.append(senml.record("config.problems", len(self.problems)))
            clock = "synced" if board.HOST_CLOCK or st.get("synced") else "unsynced"
            seq = self.seq()
            payload = senml.envelope(seq, now, clock, cfg["node"], records)
            st["dropped"] = st.get("dropped", 0) + self.ring.put(seq, "a" if alarm else "r", payload)
            st["quiet_s"] = 0
        records = None
        gc.collect()
        if self.ring.names() or report or st.get("link_s", 0) >= cfg["poll_s"]:
            if self.exchange(now):  # the gateway changed settings or flood mode: the next wake follows them
                flood = cfg["flood"] or st.get("flood_left_s", 0) > 0
                sleep_s = rhythm.period(after, cfg, flood)
        st["quiet_s"] = st.get("quiet_s", 0) + sleep_s
        st["link_s"] = st.get("link_s", 0) + sleep_s
        st["flood_left_s"] = max(0, st.get("flood_left_s", 0) - sleep_s)
        store.save(self.data + "/state.json", st)
        return sleep_s

    def exchange(self, now):
        """Connect, send every waiting message oldest first, take acks and downlinks, send our acks."""
        from khnode import link
        from khnode.downlink import Downlink

        cfg = self.cfg
        self.wdt.feed()
        if not board.wifi_up(cfg, self.wdt):
            print("wifi down: %d messages wait" % len(self.ring.names()))
            return False
        if board.set_clock(cfg):
            self.state["synced"] = True
        down = Downlink(cfg, self.state, self.ring, self.remote, now)
        client = None
        try:
            self.wdt.feed()
            client = link.client(cfg, down.handle)
            base = "kn/v1/%s/" % cfg["node"]
            sent = 0
            for name in self.ring.names():
                self.wdt.feed()
                seq, channel, payload = self.ring.read(name)
                client.publish((base + channel).encode(), payload, False, 1)
                sent += 1
            self.state["link_s"] = 0
            self.wdt.feed()
            link.poll(client, cfg["ack_wait_ms"], lambda: down.acked >= sent)
            if down.acks:
                client.publish((base + "up/acks").encode(), senml.acks(self.seq(), board.now(), down.acks), False, 1)
            print("sent %d, acked %d, waiting %d" % (sent, down.acked, len(self.ring.names())))
        except Exception as exc:  # noqa: BLE001 - any link failure: the ring keeps the messages
            print("link failed:", repr(exc))
        finally:
            if client is not None:
                link.close(client)
            board.wifi_down()
        if down.changed:
            store.save(self.data + "/remote.json", self.remote)
        return down.changed or bool(down.acks)


def main(root=""):
    """Run the node: one wake then deep sleep on battery, or wakes forever with light sleep on mains."""
    try:
        node = Node(root)
    except config.ConfigError as exc:
        print("config:", exc)
        board.fatal_sleep(RETRY_S)
        return
    while True:
        try:
            sleep_s = node.cycle()
        except Exception as exc:  # noqa: BLE001 - never die awake on battery: report, sleep, retry
            sys.print_exception(exc)
            sleep_s = node.cfg["sample_s"]
        node.wdt.feed()
        board.sleep(node.cfg, sleep_s, node.wdt)
