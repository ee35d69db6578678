"""MQTT over TLS to the gateway's local broker, with the node's own certificate, for both umqtt.simple generations.

* the 2017 generation (PyPI micropython-umqtt.simple 1.3.4) takes ``ssl=True, ssl_params={...}`` and imports
  ``usocket``/``ussl``: ``ussl`` is aliased to ``ssl`` where the firmware no longer has it;
* the current one (micropython-lib, what mip installs) takes an ``ssl.SSLContext``.

The generation is told by the ``ssl_params`` attribute the old constructor sets. Either way the server is
verified (``CERT_REQUIRED`` set explicitly: MicroPython does not verify by default) against the fleet CA, the
certificates and key are DER, and every socket gets TCP_NODELAY (QoS 1 crawls without it) and a timeout. umqtt.robust
is used when installed, with its reconnect loop bounded.
"""

import socket
import ssl
import sys
import time

if "ussl" not in sys.modules:
    try:
        import ussl  # noqa: F401
    except ImportError:
        sys.modules["ussl"] = ssl

from umqtt import simple

try:
    from umqtt import robust

    Base = robust.MQTTClient
except ImportError:
    Base = simple.MQTTClient

IPPROTO_TCP = getattr(socket, "IPPROTO_TCP", 6)
TCP_NODELAY = getattr(socket, "TCP_NODELAY", 1)


class GiveUp(Exception):
    """The broker stayed unreachable for this wake; the ring keeps the messages for the next one."""


class _Sockets:
    """Stands in for the ``socket`` module inside umqtt.simple: the same sockets, with NODELAY and a timeout."""

    def __init__(self, timeout_s, address):
        self.timeout_s = timeout_s
        self.address = address
        self.raw = None

    def getaddrinfo(self, host, port, *args):
        # umqtt resolves the name it also checks on the certificate: resolve the configured address instead.
        return socket.getaddrinfo(self.address, port, *args)

    def socket(self, *args):
        s = socket.socket(*args)
        s.settimeout(self.timeout_s)
        try:
            s.setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        self.raw = s
        return s


class Client(Base):
    """umqtt's client; robust's reconnect gives up after ``attempts`` tries instead of looping forever."""

    attempts = 2

    def delay(self, i):
        if i >= self.attempts:
            raise GiveUp("broker unreachable after %d attempts" % i)
        time.sleep_ms(200 * i)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def client(cfg, on_message):
    """A connected client, subscribed to the node's downlink; raises OSError / MQTTException / GiveUp."""
    sockets = _Sockets(cfg["timeout_s"], cfg["gateway"])
    simple.socket = sockets
    host = cfg["server_hostname"] or cfg["gateway"]
    c = Client(cfg["node"], host, cfg["port"], keepalive=cfg["keepalive_s"])
    ca, cert, key = _read(cfg["ca"]), _read(cfg["cert"]), _read(cfg["key"])
    if hasattr(c, "ssl_params"):  # 2017 generation
        c.ssl = True
        c.ssl_params = {"key": key, "cert": cert, "cert_reqs": ssl.CERT_REQUIRED, "cadata": ca, "server_hostname": host}
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(cadata=ca)
        c.ssl = ctx
    c.set_callback(on_message)
    c.sockets = sockets
    c.connect(False)  # persistent session: the broker queues downlinks while the node sleeps
    c.subscribe(("kn/v1/%s/down/#" % cfg["node"]).encode(), 1)
    return c


def poll(c, ms, done, least_ms=200):
    """Handle incoming messages for ``least_ms``, then until ``done()`` is true or ``ms`` have passed."""
    start = time.ticks_ms()
    while True:
        spent = time.ticks_diff(time.ticks_ms(), start)
        if spent >= ms or (spent >= least_ms and done()):
            return
        if c.check_msg() is None:
            time.sleep_ms(10)
        c.sockets.raw.settimeout(c.sockets.timeout_s)  # check_msg leaves the socket blocking without a timeout


def close(c):
    try:
        c.disconnect()
    except Exception:  # noqa: BLE001 - the link may already be gone
        pass
