"""What differs between boards: Wi-Fi, the clock, the watchdog and sleeping. Everything else is port-independent.

On the unix port (tests) there is no ``network`` module unless the ``hw/node`` fakes provide one, the clock is the
host's (NTP-disciplined), and ``machine`` is the fake that scripts the sensors.
"""

import sys
import time

import machine

# The unix port runs on a host whose clock NTP keeps; a board's RTC is trusted once set from NTP.
HOST_CLOCK = sys.platform in ("linux", "darwin")

# Ports whose time.time() counts from 2000 instead of 1970.
EPOCH_OFFSET = 0 if time.gmtime(0)[0] == 1970 else 946684800


def now():
    """Integer epoch seconds."""
    return int(time.time()) + EPOCH_OFFSET


class Watchdog:
    """machine.WDT, started once the config says how long a wake may stall; feed() before each slow step."""

    def __init__(self, timeout_ms):
        try:
            self.wdt = machine.WDT(timeout=timeout_ms)
        except ValueError:  # the RP2040's watchdog counts to 8.3 s at most
            timeout_ms = 8000
            self.wdt = machine.WDT(timeout=timeout_ms)
        self.timeout_ms = timeout_ms

    def feed(self):
        self.wdt.feed()


def wifi_up(cfg, wdt):
    """Join the configured Wi-Fi network; True when up (or when the port has no Wi-Fi to manage)."""
    try:
        import network
    except ImportError:
        return True
    wifi = cfg["wifi"] or {}
    sta = network.WLAN(network.STA_IF)
    sta.active(True)
    if not sta.isconnected() and wifi.get("ssid"):
        sta.connect(wifi["ssid"], wifi.get("key", ""))
    deadline = time.ticks_add(time.ticks_ms(), cfg["wifi_wait_ms"])
    while not sta.isconnected():
        if time.ticks_diff(deadline, time.ticks_ms()) <= 0:
            return False
        wdt.feed()
        time.sleep_ms(50)
    return True


def wifi_down():
    try:
        import network
    except ImportError:
        return
    network.WLAN(network.STA_IF).active(False)


def set_clock(cfg):
    """Set the RTC from NTP (the gateway usually serves it); True if it was set."""
    if not cfg["ntp"]:
        return False
    try:
        import ntptime

        ntptime.host = cfg["ntp"]
        ntptime.settime()
        return True
    except Exception:  # noqa: BLE001 - any failure leaves the clock as it was
        return False


def sleep(cfg, seconds, wdt):
    """Deep sleep on battery (the board resets and main.py starts again; the watchdog stops with it).

    On mains, light sleep in slices of half the watchdog timeout, feeding it between them: it keeps running.
    """
    ms = seconds * 1000
    if cfg["power"] == "battery":
        machine.deepsleep(ms)
    step = wdt.timeout_ms // 2
    while ms > step:
        machine.lightsleep(step)
        wdt.feed()
        ms -= step
    machine.lightsleep(ms)


def fatal_sleep(seconds):
    """Sleep after a problem the node cannot fix by itself (e.g. no usable settings), then start again."""
    machine.deepsleep(seconds * 1000)
