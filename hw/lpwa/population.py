"""Simulated LPWA devices: watch tags that press SOS now and then, and water-level gauges whose level drifts.

Each device knows its radio ``sender`` id (what IM920 / ES920LR frames show), its payload ``profile`` and how to make
its next payload values from a seeded random generator, so a simulation run is reproducible. ``gateway_device()``
gives the matching entry for the gateway's LPWA device list.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

from hw.lpwa.payload import Value

__all__ = ["SimDevice", "SimWatchTag", "SimWaterLevel"]


class SimDevice(Protocol):
    """A simulated radio device."""

    @property
    def device_id(self) -> str: ...

    @property
    def sender(self) -> str: ...

    @property
    def profile(self) -> str: ...

    def next_values(self, rng: random.Random) -> dict[str, Value]: ...

    def gateway_device(self) -> dict[str, str]: ...


@dataclass
class SimWatchTag:
    """A watch tag (profile ``watch-tag-v1``): keyed by its payload tag id; SOS with ``sos_probability`` per beacon."""

    device_id: str
    sender: str
    tag_id: int
    battery: int = 95
    sos_probability: float = 0.0
    profile: str = "watch-tag-v1"

    def next_values(self, rng: random.Random) -> dict[str, Value]:
        sos = rng.random() < self.sos_probability
        return {"tag_id": self.tag_id, "battery": self.battery, "sos": sos, "low_battery": self.battery < 20}

    def gateway_device(self) -> dict[str, str]:
        return {"id": self.device_id, "sender": f"{self.tag_id:08X}", "profile": self.profile}


@dataclass
class SimWaterLevel:
    """A water-level gauge: the level random-walks by up to ``drift_cm`` per frame; flood alert at ``flood_cm``.

    With ``node_id`` set it uses ``water-level-id-v1`` (id in the payload, for RAK3172 P2P), else ``water-level-v1``
    (keyed by the radio sender).
    """

    device_id: str
    sender: str
    level_cm: float = 120.0
    drift_cm: float = 2.0
    flood_cm: float = 400.0
    battery: int = 90
    node_id: int | None = None

    @property
    def profile(self) -> str:
        return "water-level-v1" if self.node_id is None else "water-level-id-v1"

    def next_values(self, rng: random.Random) -> dict[str, Value]:
        self.level_cm = min(max(self.level_cm + rng.uniform(-self.drift_cm, self.drift_cm), -100.0), 2000.0)
        values: dict[str, Value] = {
            "level": round(self.level_cm),
            "battery": self.battery,
            "sensor_fault": False,
            "flood": self.level_cm >= self.flood_cm,
        }
        if self.node_id is not None:
            values["node_id"] = self.node_id
        return values

    def gateway_device(self) -> dict[str, str]:
        sender = self.sender if self.node_id is None else f"{self.node_id:04X}"
        return {"id": self.device_id, "sender": sender, "profile": self.profile}
