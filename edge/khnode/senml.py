"""The readings envelope of kakehashi/wire.py, written by hand: ``{"v":1,"seq":..,"ts":..,"cq":..,"senml":[..]}``.

SenML (RFC 8428) records named ``<node>:<quantity>`` through a base name, one base time per message, integer epoch
seconds (float32 ports cannot hold epoch seconds in a float). Written as text, record by record, so that encoding a
report allocates little and numbers keep a fixed number of decimals.
"""

MIN_EPOCH = 1 << 28  # the wire refuses earlier (relative) times
INF = float("inf")


def _number(value):
    if isinstance(value, float):
        if value != value or value in (INF, -INF):
            raise ValueError("not a finite number")
        text = "%.4f" % value
        text = text.rstrip("0")
        return text + "0" if text.endswith(".") else text
    return str(int(value))


def record(name, value, unit=None):
    """One SenML record: a number (``v``), a bool (``vb``) or an ASCII string without quotes (``vs``)."""
    if value is True or value is False:
        body = '"vb":' + ("true" if value else "false")
    elif isinstance(value, str):
        body = '"vs":"' + value + '"'
    else:
        body = '"v":' + _number(value)
    if unit:
        return '{"n":"' + name + '","u":"' + unit + '",' + body + "}"
    return '{"n":"' + name + '",' + body + "}"


def envelope(seq, ts, clock, node, records):
    """The whole message as bytes; ``records`` (at least one) are strings from :func:`record`, observed at ``ts``.

    The base name and base time go into the first record: every record must resolve to a name and carry a value.
    """
    if ts < MIN_EPOCH:
        raise ValueError("the clock is not set (time %d)" % ts)
    head = '{"v":1,"seq":%d,"ts":%d,"cq":"%s","senml":[{"bn":"%s:","bt":%d,' % (seq, ts, clock, node, ts)
    return (head + records[0][1:] + "".join("," + r for r in records[1:]) + "]}").encode()


def acks(seq, ts, items):
    """An acks message (the wire's shape): items are ``(command id, status, reason or None, result JSON or None)``."""
    parts = []
    for command, status, reason, result in items:
        text = '{"command":"%s","status":"%s","at":%d' % (command, status, ts)
        if reason:
            text += ',"reason":"' + reason.replace("\\", "/").replace('"', "'") + '"'
        if result:
            text += ',"result":' + result
        parts.append(text + "}")
    return ('{"v":1,"seq":%d,"ts":%d,"acks":[%s]}' % (seq, ts, ",".join(parts))).encode()
