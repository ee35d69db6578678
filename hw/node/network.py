"""A fake ``network`` module: one station interface whose link the scenario scripts (step key ``wifi``)."""

import machine  # type: ignore[import-not-found]  # the fake beside this file, on MICROPYPATH

STA_IF = 0
AP_IF = 1
STAT_GOT_IP = 1010


class WLAN:
    def __init__(self, interface: int = STA_IF) -> None:
        self._active = False

    def active(self, on: bool | None = None) -> bool:
        if on is not None:
            self._active = on
        return self._active

    def connect(self, ssid: str | None = None, key: str | None = None) -> None:
        pass

    def isconnected(self) -> bool:
        return self._active and machine._step().get("wifi", True) is not False

    def status(self) -> int:
        return STAT_GOT_IP if self.isconnected() else 0

    def disconnect(self) -> None:
        pass
