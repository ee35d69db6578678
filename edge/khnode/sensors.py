"""The tiny hardware layer: water-level sensors as objects whose ``burst(n)`` returns n levels in metres.

A sample outside the sensor's range is None (the filters count it). Drivers:

* ``UartDistance``: ultrasonic/radar sensors that stream 4-byte frames ``0xFF, high, low, sum`` with the distance in
  millimetres (A02YYUW, DYP-A01 and similar), on a UART;
* ``I2cDistance``: sensors with the distance in a little-endian register (TF-Luna style: register 0, centimetres);
* ``LoopPressure``: a 4-20 mA submersible pressure transmitter read across a shunt resistor on an ADC.

Distance sensors hang above the water: level = datum - distance. The pressure sensor lies on the bed:
level = zero + depth, with depth proportional to the loop current above 4 mA.
"""

import time

from machine import ADC, I2C, UART, Pin


class UartDistance:
    def __init__(self, cfg):
        kw = {"baudrate": cfg.get("baud", 9600)}
        if "tx" in cfg:
            kw["tx"] = cfg["tx"]
            kw["rx"] = cfg["rx"]
        self.uart = UART(cfg.get("uart", 1), **kw)
        self.datum = cfg["datum_m"]
        self.low = cfg.get("min_m", 0.03)
        self.high = cfg.get("max_m", 7.5)
        self.buf = bytearray(4)

    def _frame(self, deadline):
        """The next valid frame's distance in metres, or None when the sensor is silent until ``deadline``."""
        buf = self.buf
        while time.ticks_diff(deadline, time.ticks_ms()) > 0:
            if not self.uart.any():
                time.sleep_ms(5)
                continue
            if self.uart.read(1) != b"\xff":
                continue
            got = self.uart.readinto(memoryview(buf)[1:], 3)
            if got == 3 and (0xFF + buf[1] + buf[2]) & 0xFF == buf[3]:
                return (buf[1] << 8 | buf[2]) / 1000
        return None

    def burst(self, n):
        deadline = time.ticks_add(time.ticks_ms(), 300 + 150 * n)
        out = []
        for _ in range(n):
            d = self._frame(deadline)
            out.append(self.datum - d if d is not None and self.low <= d <= self.high else None)
        return out


class I2cDistance:
    def __init__(self, cfg):
        if "scl" in cfg:
            self.i2c = I2C(cfg.get("i2c", 0), scl=Pin(cfg["scl"]), sda=Pin(cfg["sda"]), freq=100000)
        else:
            self.i2c = I2C(cfg.get("i2c", 0))
        self.addr = cfg.get("addr", 0x10)
        self.reg = cfg.get("reg", 0)
        self.scale = cfg.get("scale_m", 0.01)
        self.datum = cfg["datum_m"]
        self.low = cfg.get("min_m", 0.2)
        self.high = cfg.get("max_m", 8.0)

    def burst(self, n):
        out = []
        for _ in range(n):
            try:
                raw = self.i2c.readfrom_mem(self.addr, self.reg, 2)
                d = (raw[0] | raw[1] << 8) * self.scale
                out.append(self.datum - d if self.low <= d <= self.high else None)
            except OSError:  # no ACK: sensor missing or not powered
                out.append(None)
            time.sleep_ms(10)
        return out


class LoopPressure:
    def __init__(self, cfg):
        self.adc = ADC(Pin(cfg["adc"]))
        self.volts_per_count = cfg.get("vref", 3.3) / 65535
        self.shunt = cfg.get("shunt_ohm", 150)
        self.zero = cfg["zero_m"]
        self.span = cfg.get("span_m", 10.0)

    def burst(self, n):
        out = []
        for _ in range(n):
            ma = self.adc.read_u16() * self.volts_per_count / self.shunt * 1000
            # below 3.8 mA: wire break or sensor fault (NAMUR NE 43); above 20.5 mA: over range
            out.append(self.zero + (ma - 4) / 16 * self.span if 3.8 <= ma <= 20.5 else None)
            time.sleep_ms(2)
        return out


def battery_volts(cfg):
    """The battery voltage through a divider on an ADC pin, or None."""
    if not cfg:
        return None
    return ADC(Pin(cfg["adc"])).read_u16() * cfg.get("vref", 3.3) / 65535 * cfg.get("scale", 2.0)


def make(cfg):
    """``[(quantity, sensor)]`` for the configured sensors: the distance sensor reports ``level``, the pressure
    sensor ``level`` when it is the only one, else ``level.p``."""
    out = []
    dist = cfg["distance"]
    if dist:
        out.append(("level", UartDistance(dist) if dist.get("bus", "uart") == "uart" else I2cDistance(dist)))
    if cfg["pressure"]:
        out.append(("level.p" if out else "level", LoopPressure(cfg["pressure"])))
    return out
