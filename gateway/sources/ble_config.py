"""Configuration of the BLE source: adapter, scanning mode, aggregation window, watchdog and the registered tags.

Only tags listed here with ``consent: true`` are ever forwarded (watch tags are personal data). A tag is named by
its payload key (see :mod:`hw.ble.keys`), never by its Bluetooth address, except BTHome sensors registered with an
``bthome:addr:`` key, which is meant for fixed-address sensors that stay in one place.
"""

from __future__ import annotations

import re
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hw.ble.keys import normalize_tag_key
from kakehashi.fields import Identifier

ScanningMode = Literal["passive", "active", "auto"]
_ADAPTER = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_DOTTED = re.compile(r"[A-Za-z_][\w.]*[:.][A-Za-z_]\w*")


class RegisteredTag(BaseModel):
    """One watch tag or sensor the gateway may forward: the device id it reports as, its key, and consent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Identifier = Field(description="device id the readings carry, e.g. tag-0001")
    key: str = Field(description="payload key, e.g. ibeacon:<uuid>:<major>:<minor> (see docs/ble.md)")
    consent: bool = Field(description="a recorded consent for this tag; without it the tag is dropped")

    @field_validator("key")
    @classmethod
    def _check_key(cls, value: str) -> str:
        return normalize_tag_key(value)


class BleSourceConfig(BaseModel):
    """The BLE source's settings (``[[sources.ble]]`` in the gateway configuration)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Identifier = Field(default="ble", description="source name in health reports")
    adapter: str = Field(default="hci0", description="Bluetooth adapter, e.g. hci0 (see `bluetoothctl list`)")
    scanning_mode: ScanningMode = Field(
        default="auto", description="passive, active, or auto: passive where the adapter/backend allows, else active"
    )
    window_s: float = Field(
        default=10.0, gt=0, description="aggregation window: one set of readings per tag per window"
    )
    watchdog_s: float = Field(default=60.0, gt=0, description="no advertisement for this long restarts the scan")
    retry_initial_s: float = Field(default=1.0, gt=0, description="first wait after the adapter fails to start")
    retry_max_s: float = Field(default=60.0, gt=0, description="longest wait between adapter start attempts")
    tags: tuple[RegisteredTag, ...] = Field(
        default=(), description="registered tags; only consented ones are forwarded"
    )
    backend: str | None = Field(
        default=None,
        description="bleak scanner backend as module:Class (e.g. hw.ble.simulator:SimulatedScannerBackend); "
        "default: the platform's (BlueZ on the Pi)",
    )

    @field_validator("adapter")
    @classmethod
    def _check_adapter(cls, value: str) -> str:
        if not _ADAPTER.fullmatch(value):
            raise ValueError(f"invalid adapter name {value!r}: use the name `bluetoothctl list` shows, e.g. hci0")
        return value

    @field_validator("backend")
    @classmethod
    def _check_backend(cls, value: str | None) -> str | None:
        if value is not None and not _DOTTED.fullmatch(value):
            raise ValueError(
                f"invalid backend {value!r}: use module:Class, e.g. hw.ble.simulator:SimulatedScannerBackend"
            )
        return value

    @model_validator(mode="after")
    def _check_tags(self) -> Self:
        keys: dict[str, str] = {}
        consent: dict[str, bool] = {}
        for tag in self.tags:
            if tag.key in keys:
                raise ValueError(f"tag key {tag.key!r} is registered twice (devices {keys[tag.key]} and {tag.id})")
            keys[tag.key] = tag.id
            if consent.setdefault(tag.id, tag.consent) != tag.consent:
                raise ValueError(f"device {tag.id} is registered with and without consent: record one decision")
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError("retry_max_s must not be shorter than retry_initial_s")
        return self
