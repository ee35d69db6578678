"""What the gateway sends down: relay acks, remote configuration, commands; and the acks the node sends back.

* ``down/ack`` ``{"v":1,"seq":n}``: message n is durably at the gateway, drop it from the ring;
* ``down/config`` ``{"v":1,"version":n,"ts":..,"delta":{key: value}}`` (the shape of the wire's desired message):
  applied whole or not at all; a version at or below the last applied one is refused as stale;
* ``down/commands`` (the wire's command shape): ``flood_mode`` ``{"on": bool, "minutes": 60}`` and
  ``report_now``; a repeated idempotency key is acknowledged again without running twice; past its deadline a
  command expires.

Config changes and commands are acknowledged on ``up/acks`` in the wire's acks shape; a config change is acked
under the id ``config-<version>``.
"""

import json

from khnode import config

KEYS_KEPT = 8


class Downlink:
    def __init__(self, cfg, state, ring, remote, now):
        self.cfg = cfg
        self.state = state
        self.ring = ring
        self.remote = remote  # {"version": n, "delta": {...}}: what the gateway set, kept in data/remote.json
        self.now = now
        self.acks = []  # (command id, status, reason, result JSON)
        self.acked = 0
        self.changed = False

    def handle(self, topic, payload):
        kind = topic.rsplit(b"/", 1)[-1]
        try:
            doc = json.loads(payload)
            if not isinstance(doc, dict) or doc.get("v") != 1:
                raise ValueError("not a version 1 message")
            if kind == b"ack":
                if self.ring.ack(doc["seq"]):
                    self.acked += 1
            elif kind == b"config":
                self.config(doc)
            elif kind == b"commands":
                self.command(doc)
        except (ValueError, KeyError, TypeError) as exc:
            print("downlink", topic, "refused:", exc)

    def config(self, doc):
        version = doc["version"]
        ident = "config-%d" % version
        if not isinstance(version, int) or version <= self.remote.get("version", 0):
            self.acks.append((ident, "rejected", "stale version", None))
            return
        delta = doc.get("delta")
        if not isinstance(delta, dict):
            self.acks.append((ident, "rejected", "delta must be an object", None))
            return
        trial = dict(self.cfg)
        problems = []
        applied = config.apply(trial, delta, config.REMOTE, problems)
        if problems:
            self.acks.append((ident, "rejected", "; ".join(problems), None))
            return
        self.cfg.update(trial)
        merged = dict(self.remote.get("delta", {}))
        merged.update(delta)
        self.remote["version"] = version
        self.remote["delta"] = merged
        self.changed = True
        self.acks.append((ident, "succeeded", None, json.dumps({"applied": applied})))

    def command(self, doc):
        ident = doc["id"]
        key = doc.get("idempotency_key", ident)
        keys = self.state.setdefault("keys", [])
        if key in keys:
            self.acks.append((ident, "succeeded", None, '{"repeated":true}'))
            return
        if doc.get("device") != self.cfg["node"]:
            self.acks.append((ident, "rejected", "addressed to another device", None))
            return
        if doc.get("deadline", 0) < self.now:
            self.acks.append((ident, "expired", "deadline passed before the node woke", None))
            return
        name = doc.get("name")
        params = doc.get("params") or {}
        if name == "flood_mode":
            on = params.get("on", True)
            minutes = params.get("minutes", 60)
            if on is not True and on is not False or not isinstance(minutes, int) or not 1 <= minutes <= 10080:
                self.acks.append((ident, "rejected", "params: on (bool), minutes (1-10080)", None))
                return
            self.state["flood_left_s"] = minutes * 60 if on else 0
            self.state["force"] = True
        elif name == "report_now":
            self.state["force"] = True
        else:
            self.acks.append((ident, "rejected", "unknown command", None))
            return
        keys.append(key)
        while len(keys) > KEYS_KEPT:
            keys.pop(0)
        self.acks.append((ident, "succeeded", None, None))
