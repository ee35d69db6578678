"""The node's settings: defaults, the JSON file written at flashing, and remote changes from the gateway.

``load`` reads ``node.json``; when that file is unreadable or not JSON it falls back to ``node.json.good``, the
copy the node kept of the last file that loaded, and says so. Each key is checked on its own: a bad value is
replaced by its default and reported, never fatal. Only a missing identity (node id, gateway host) is fatal.
"""

import json

DEFAULTS = {
    "node": None,  # the node id, as in its certificate (e.g. wl-0007)
    "gateway": None,  # host name or address of the gateway's local broker
    "port": 8884,
    "server_hostname": None,  # the name to verify on the broker's certificate; defaults to "gateway"
    "ca": "certs/ca.der",
    "cert": "certs/node.der",
    "key": "certs/node.key.der",
    "wifi": None,  # {"ssid": ..., "key": ...}; None where the port has no Wi-Fi (unix port)
    "ntp": None,  # NTP server to set the clock from after Wi-Fi is up (usually the gateway)
    "power": "battery",  # battery: deep sleep between wakes; mains: light sleep, stays on
    "sample_s": 600,  # wake period below the observation-start level
    "active_s": 600,  # wake and report period at or above it (at most 600: the 10-minute rhythm)
    "flood_s": 60,  # wake and report period in flood mode
    "heartbeat_s": 86400,  # longest time without a report
    "poll_s": 21600,  # longest time without reading the downlink (remote config, commands)
    "flood": False,
    "levels": {"observe": 1.0, "standby": 2.0, "caution": 2.5, "evacuate": 3.0, "danger": 3.5},
    "hysteresis_m": 0.05,
    "samples": 7,  # readings per burst, median-filtered
    "spike_m": 0.5,
    "stuck_n": 12,
    "distance": None,  # {"bus": "uart"|"i2c", ..., "datum_m": ...}: level = datum - distance
    "pressure": None,  # {"adc": pin, "zero_m": ..., "span_m": ...}: level = zero + depth (4-20 mA)
    "battery": None,  # {"adc": pin, "scale": 2.0}
    "wifi_wait_ms": 15000,
    "wdt_ms": 30000,
    "ack_wait_ms": 3000,
    "timeout_s": 10,
    "keepalive_s": 60,
    "ring_max": 300,
}

# Keys the gateway may change on down/config, with their check: (type, low, high).
REMOTE = {
    "sample_s": (int, 10, 86400),
    "active_s": (int, 10, 600),
    "flood_s": (int, 10, 600),
    "heartbeat_s": (int, 600, 86400),
    "poll_s": (int, 60, 604800),
    "hysteresis_m": (float, 0.0, 2.0),
    "spike_m": (float, 0.01, 100.0),
    "stuck_n": (int, 0, 1000),
    "samples": (int, 1, 31),
    "flood": (bool, None, None),
}
LEVEL_RANGE = (-1000.0, 10000.0)
LOCAL = {"port": (int, 1, 65535), "wdt_ms": (int, 5000, 120000), "ack_wait_ms": (int, 100, 60000)}
LOCAL["wifi_wait_ms"] = (int, 0, 60000)
LOCAL.update({"timeout_s": (int, 1, 120), "keepalive_s": (int, 10, 300), "ring_max": (int, 1, 5000)})


class ConfigError(Exception):
    pass


def check(key, value, rule):
    """The value if it follows ``rule`` (ints are accepted for floats), else raise ValueError with the reason."""
    kind, low, high = rule
    if kind is bool:
        if value is True or value is False:
            return value
        raise ValueError("%s must be true or false" % key)
    if value is True or value is False or not isinstance(value, (int, float)):
        raise ValueError("%s must be a number" % key)
    if kind is int and not isinstance(value, int):
        raise ValueError("%s must be a whole number" % key)
    if not low <= value <= high:
        raise ValueError("%s must be from %s to %s" % (key, low, high))
    return kind(value)


def check_levels(levels):
    """A full, strictly ascending set of thresholds as a dict, else ValueError."""
    if not isinstance(levels, dict):
        raise ValueError("levels must be an object")
    last = None
    for name in ("observe", "standby", "caution", "evacuate", "danger"):
        value = check("levels." + name, levels.get(name), (float, LEVEL_RANGE[0], LEVEL_RANGE[1]))
        if last is not None and value <= last:
            raise ValueError("levels must ascend: %s is not above the level before it" % name)
        last = value
    return levels


def apply(cfg, delta, rules, problems):
    """Merge ``delta`` into ``cfg`` key by key; append a reason to ``problems`` for each refused key.

    Keys ``levels.<name>`` change one threshold; the whole set must still ascend. Returns the keys applied.
    """
    applied = []
    levels = dict(cfg["levels"])
    touched = []
    for key in delta:
        value = delta[key]
        try:
            if key.startswith("levels."):
                if key[7:] not in levels:
                    raise ValueError("%s is not a threshold" % key)
                levels[key[7:]] = check(key, value, (float, LEVEL_RANGE[0], LEVEL_RANGE[1]))
                touched.append(key)
            elif key == "levels":
                if not isinstance(value, dict):
                    raise ValueError("levels must be an object")
                for name in value:
                    if name not in levels:
                        raise ValueError("levels.%s is not a threshold" % name)
                    levels[name] = check("levels." + name, value[name], (float, LEVEL_RANGE[0], LEVEL_RANGE[1]))
                touched.append(key)
            elif key in rules:
                cfg[key] = check(key, value, rules[key])
                applied.append(key)
            else:
                raise ValueError("%s cannot be set here" % key)
        except ValueError as exc:
            problems.append(str(exc))
    if touched:
        try:
            cfg["levels"] = check_levels(levels)
            applied.extend(touched)
        except ValueError as exc:
            problems.extend("%s: %s" % (key, exc) for key in touched)
    return applied


def _read(path):
    with open(path) as f:
        doc = json.load(f)
    if not isinstance(doc, dict):
        raise ValueError("the file must hold a JSON object")
    return doc


def load(path, remote=None):
    """Return ``(cfg, problems)``: defaults, then the file (or its last good copy), then ``remote`` changes."""
    problems = []
    try:
        doc = _read(path)
        good = True
    except (OSError, ValueError) as exc:
        problems.append("%s unusable (%s): using its last good copy" % (path, exc))
        good = False
        try:
            doc = _read(path + ".good")
        except (OSError, ValueError):
            raise ConfigError("%s is unusable and there is no good copy: %s" % (path, exc))
    cfg = dict(DEFAULTS)
    rules = dict(REMOTE)
    rules.update(LOCAL)
    rest = {}
    for key in doc:
        if key in rules or key.startswith("levels"):
            rest[key] = doc[key]
        elif key in DEFAULTS:
            cfg[key] = doc[key]
        else:
            problems.append("unknown key %s ignored" % key)
    apply(cfg, rest, rules, problems)
    if not isinstance(cfg["node"], str) or not cfg["node"] or not isinstance(cfg["gateway"], str):
        raise ConfigError("%s must name the node and its gateway (keys node, gateway)" % path)
    if cfg["power"] not in ("battery", "mains"):
        problems.append("power must be battery or mains")
        cfg["power"] = "battery"
    if cfg["distance"] is None and cfg["pressure"] is None:
        problems.append("no sensor configured (distance or pressure)")
    if remote:
        apply(cfg, remote, REMOTE, problems)
    if good:
        keep_good(path)
    return cfg, problems


def keep_good(path):
    """Copy a file that loaded to ``<path>.good`` unless the copy is already the same."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        with open(path + ".good", "rb") as f:
            if f.read() == data:
                return
    except OSError:
        pass
    with open(path + ".good", "wb") as f:
        f.write(data)
