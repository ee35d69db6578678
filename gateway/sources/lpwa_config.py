"""Configuration of the LPWA source: the serial port, the module type, RAK3172 radio parameters and the devices.

``parse_lpwa_config(mapping)`` validates a plain mapping (from the gateway's config file) and raises
:class:`~kakehashi.errors.ConfigError` whose lines name each bad key and say how to fix it. Devices are matched by
the module's radio sender id (IM920, ES920LR) or, when their payload profile has an ``id_field``, by that payload id
written as upper-case hex of the field's width (a watch tag's uint32 tag id ``A1B20001``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

import pydantic
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from hw.lpwa.modules import MODULES, P2PRadio
from hw.lpwa.profile import Profile, ProfileError, builtin_profiles, load_profile_dir
from kakehashi.errors import ConfigError
from kakehashi.fields import Identifier

__all__ = [
    "JP_920_MAX_HZ",
    "JP_920_MIN_HZ",
    "LpwaDeviceConfig",
    "LpwaSourceConfig",
    "Rak3172RadioConfig",
    "parse_lpwa_config",
]

JP_920_MIN_HZ = 920_600_000
JP_920_MAX_HZ = 928_000_000
_JP_CHANNEL_STEP_HZ = 200_000  # ARIB STD-T108 unit channels: 920.6 MHz + n × 200 kHz
_BAUDRATES = (9_600, 19_200, 38_400, 57_600, 115_200, 230_400)


class Rak3172RadioConfig(BaseModel):
    """LoRa P2P parameters for a RAK3172, limited to what the Japanese 920 MHz band allows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    frequency_hz: int = JP_920_MIN_HZ
    spreading_factor: int = Field(7, ge=5, le=12)
    bandwidth_khz: Literal[125, 250, 500] = 125
    coding_rate: int = Field(0, ge=0, le=3, description="0 = 4/5, 1 = 4/6, 2 = 4/7, 3 = 4/8")
    preamble: int = Field(8, ge=5, le=65_535)
    tx_power_dbm: int = Field(13, ge=0, le=13, description="ARIB STD-T108 allows 20 mW (13 dBm) here")

    @field_validator("frequency_hz")
    @classmethod
    def _in_band(cls, value: int) -> int:
        if not JP_920_MIN_HZ <= value <= JP_920_MAX_HZ:
            raise ValueError(
                f"{value} Hz is outside the Japanese 920 MHz band: use {JP_920_MIN_HZ}..{JP_920_MAX_HZ} Hz"
            )
        if (value - JP_920_MIN_HZ) % _JP_CHANNEL_STEP_HZ:
            raise ValueError(f"{value} Hz is not a 920 MHz channel centre: use 920600000 + n × 200000 Hz")
        return value

    def to_radio(self) -> P2PRadio:
        return P2PRadio(
            self.frequency_hz,
            self.spreading_factor,
            self.bandwidth_khz,
            self.coding_rate,
            self.preamble,
            self.tx_power_dbm,
        )


class LpwaDeviceConfig(BaseModel):
    """One registered radio device: its gateway id, how frames name it, and its payload profile."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Identifier
    sender: str = Field(description="radio sender id (4 hex digits), or the payload id field in hex")
    profile: str

    @field_validator("sender")
    @classmethod
    def _hex_sender(cls, value: str) -> str:
        text = value.strip().upper().removeprefix("0X")
        if not text or len(text) > 8 or any(c not in "0123456789ABCDEF" for c in text):
            raise ValueError(f"{value!r} is not a sender id: use the hex id the module prints, like 0001 or A1B20001")
        return text


class LpwaSourceConfig(BaseModel):
    """The LPWA source's settings (``extra`` keys are refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("lpwa", min_length=1, max_length=64)
    port: str = Field(min_length=1, description="serial device, e.g. /dev/ttyUSB0 or /dev/serial/by-id/…")
    module: Literal["im920", "es920lr", "rak3172"]
    baudrate: int | None = Field(None, description="UART speed; default per module")
    radio: Rak3172RadioConfig | None = Field(None, description="RAK3172 LoRa P2P parameters")
    profile_dir: Path | None = Field(None, description="extra payload profile *.toml files")
    init_timeout_s: float = Field(2.0, gt=0, le=30)
    reconnect_min_s: float = Field(0.2, gt=0, le=60)
    reconnect_max_s: float = Field(10.0, gt=0, le=600)
    devices: list[LpwaDeviceConfig] = Field(default_factory=list)

    _profiles: dict[str, Profile] = PrivateAttr(default_factory=dict)

    @field_validator("baudrate")
    @classmethod
    def _known_baudrate(cls, value: int | None) -> int | None:
        if value is not None and value not in _BAUDRATES:
            raise ValueError(f"{value} is not a module UART speed: use one of {', '.join(map(str, _BAUDRATES))}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.radio is not None and self.module != "rak3172":
            raise ValueError("radio: P2P radio parameters apply only to module rak3172: remove the radio section")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s is larger than reconnect_max_s: lower it or raise reconnect_max_s")
        profiles = builtin_profiles()
        if self.profile_dir is not None:
            try:
                profiles.update(load_profile_dir(self.profile_dir))
            except ProfileError as exc:
                raise ValueError(f"profile_dir: {exc}") from None
        self._check_devices(profiles)
        self._profiles = profiles
        return self

    def _check_devices(self, profiles: dict[str, Profile]) -> None:
        ids: set[str] = set()
        keys: set[tuple[str, str]] = set()
        for index, device in enumerate(self.devices):
            where = f"devices[{index}]"
            if device.id in ids:
                raise ValueError(f"{where}.id: {device.id} is listed twice: give each device its own id")
            ids.add(device.id)
            profile = profiles.get(device.profile)
            if profile is None:
                raise ValueError(
                    f"{where}.profile: unknown profile {device.profile!r}: use one of {', '.join(sorted(profiles))} "
                    "or add a TOML file to profile_dir"
                )
            if profile.id_field is not None:
                width = 2 * profile.field(profile.id_field).size
                if len(device.sender) > width:
                    raise ValueError(
                        f"{where}.sender: {device.sender} is longer than {profile.name}'s {profile.id_field} "
                        f"({width} hex digits): use the id the device sends"
                    )
                key = (profile.name, device.sender.zfill(width))
            elif not MODULES[self.module].has_sender:
                raise ValueError(
                    f"{where}.profile: {self.module} P2P frames carry no sender address, so {profile.name} devices "
                    "cannot be told apart: use a profile with an id_field (for example water-level-id-v1)"
                )
            elif len(device.sender) > 4:
                raise ValueError(f"{where}.sender: {self.module} sender ids are 4 hex digits, like 0001")
            else:
                key = ("", device.sender.zfill(4))
            if key in keys:
                raise ValueError(f"{where}.sender: {device.sender} is already used by another device: fix one of them")
            keys.add(key)

    @property
    def effective_baudrate(self) -> int:
        return self.baudrate or MODULES[self.module].default_baudrate

    @property
    def p2p_radio(self) -> P2PRadio | None:
        if self.module != "rak3172":
            return None
        return (self.radio or Rak3172RadioConfig.model_validate({})).to_radio()

    @property
    def profiles(self) -> dict[str, Profile]:
        """Built-in profiles plus those of ``profile_dir``, by name."""
        return dict(self._profiles)


def _where(loc: tuple[int | str, ...], prefix: str) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def parse_lpwa_config(data: Mapping[str, Any], *, prefix: str = "lpwa") -> LpwaSourceConfig:
    """Validate ``data`` into an :class:`LpwaSourceConfig`; errors name each bad key (under ``prefix``) and the fix."""
    try:
        return LpwaSourceConfig.model_validate(dict(data))
    except pydantic.ValidationError as exc:
        lines = []
        for error in exc.errors():
            where = _where(tuple(error["loc"]), prefix)
            if error["type"] == "extra_forbidden":
                message = "unknown key: remove it or check its spelling"
            elif error["type"] == "missing":
                message = "required key is missing: add it"
            else:
                message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"{where}: {message}")
        raise ConfigError("invalid LPWA configuration:\n  " + "\n  ".join(lines)) from None
