"""Configuration of the gateway's Modbus source: buses (Modbus TCP or RTU) and the devices on each.

Example (the TOML a site writes; the gateway's config file nests it under its Modbus section)::

    [[buses]]                       # Modbus TCP: host (and port) make it a TCP bus
    host = "192.168.10.20"
    port = 502
    devices = [
        { id = "em-0001", unit = 1, profile = "sdm120" },
        { id = "wl-0007", unit = 2, profile = "water-level", poll_interval_s = 5, points = ["water_level"] },
    ]

    [[buses]]                       # Modbus RTU: a serial port path makes it an RTU bus
    port = "/dev/ttyUSB0"
    baudrate = 9600
    parity = "E"
    devices = [{ id = "wm-0003", unit = 3, profile = "water-meter" }]

Every error names the key and says how to fix it; unknown keys are refused (a typo is never silently ignored).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from hw.modbus.model import DeviceProfile
from hw.modbus.profile import ProfileError, load_profile
from kakehashi.fields import Identifier

__all__ = [
    "ModbusBusConfig",
    "ModbusDeviceConfig",
    "ModbusRtuBusConfig",
    "ModbusSourceConfig",
    "ModbusTcpBusConfig",
]


class ModbusDeviceConfig(BaseModel):
    """One device on a bus: its Kakehashi id, its Modbus unit id, its profile, and optional overrides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Identifier = Field(description="device id, e.g. em-0001 (lowercase letters, digits, '-')")
    unit: int = Field(ge=1, le=247, description="Modbus device id (slave address) 1..247")
    profile: str = Field(description="a profile name from hw/modbus/profiles (e.g. sdm120) or a path to a .toml")
    poll_interval_s: float | None = Field(default=None, gt=0, le=86400, description="override the profile's")
    points: tuple[str, ...] | None = Field(default=None, description="read only these points (default: all)")

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        try:
            load_profile(value)
        except ProfileError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _known_points(self) -> ModbusDeviceConfig:
        if self.points is None:
            return self
        profile = load_profile(self.profile)
        if not self.points:
            raise ValueError(f"points is empty; list some of {', '.join(profile.point_names)} or remove the key")
        for name in self.points:
            if name not in profile.point_names:
                raise ValueError(
                    f"points: {name!r} is not a point of profile {profile.name!r}; "
                    f"use some of {', '.join(profile.point_names)}"
                )
        return self

    def load_profile(self) -> DeviceProfile:
        return load_profile(self.profile)


class _BusConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(default=None, description="a name for logs and health (default: the endpoint)")
    devices: tuple[ModbusDeviceConfig, ...] = Field(min_length=1, description="the devices on this bus")

    @model_validator(mode="after")
    def _unique_units(self) -> _BusConfig:
        seen: dict[int, str] = {}
        for device in self.devices:
            if device.unit in seen:
                raise ValueError(
                    f"devices {seen[device.unit]!r} and {device.id!r} both use unit {device.unit} on one bus; "
                    "give each device its own unit id"
                )
            seen[device.unit] = device.id
        return self


class ModbusTcpBusConfig(_BusConfig):
    """A Modbus TCP device or TCP-to-RTU gateway: ``host`` and ``port``."""

    transport: Literal["tcp"] = "tcp"
    host: str = Field(min_length=1, description="IP address or host name")
    port: int = Field(default=502, ge=1, le=65535)
    timeout_s: float = Field(default=1.0, gt=0, le=30, description="answer timeout per request")

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


class ModbusRtuBusConfig(_BusConfig):
    """An RS-485 line on a serial port: ``port`` (e.g. /dev/ttyUSB0) and line settings."""

    transport: Literal["rtu"] = "rtu"
    port: str = Field(min_length=1, description="serial port, e.g. /dev/ttyUSB0 or /dev/serial/by-id/...")
    baudrate: int = Field(default=9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout_s: float = Field(default=0.5, gt=0, le=30, description="answer timeout per request")

    @property
    def endpoint(self) -> str:
        return self.port


def _bus_transport(value: Any) -> str | None:
    if isinstance(value, dict):
        if "transport" in value:
            return str(value["transport"])
        if "host" in value:
            return "tcp"
        return "rtu" if "port" in value else None
    return getattr(value, "transport", None)


ModbusBusConfig = Annotated[
    Annotated[ModbusTcpBusConfig, Tag("tcp")] | Annotated[ModbusRtuBusConfig, Tag("rtu")],
    Discriminator(
        _bus_transport,
        custom_error_type="modbus_bus",
        custom_error_message=(
            "a bus needs host (Modbus TCP) or port = '/dev/ttyUSB0' (Modbus RTU); transport, if given, is tcp or rtu"
        ),
    ),
]


class ModbusSourceConfig(BaseModel):
    """The Modbus source: its buses, and how it backs off from failing devices and lost connections."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    buses: tuple[ModbusBusConfig, ...] = Field(min_length=1)
    backoff_initial_s: float = Field(default=1.0, gt=0, description="first retry delay of a failing device")
    backoff_max_s: float = Field(default=60.0, gt=0, description="longest retry delay of a failing device")
    quarantine_after: int = Field(default=3, ge=1, description="consecutive failures that quarantine a device")
    reconnect_initial_s: float = Field(default=0.5, gt=0, description="first delay before reconnecting a bus")
    reconnect_max_s: float = Field(default=30.0, gt=0, description="longest delay before reconnecting a bus")
    reconnect_after_timeouts: int = Field(
        default=5, ge=1, description="consecutive timeouts on a TCP bus that make it reconnect (half-open links)"
    )
    submit_linger_ms: float = Field(
        default=20.0,
        ge=0,
        le=1000,
        description=(
            "while a bus polls back to back, how long a poll's readings may wait for the next polls' so that they "
            "are committed and sent as one message (0: each poll alone; alarms and an unhurried bus never wait)"
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> ModbusSourceConfig:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s is below backoff_initial_s; raise backoff_max_s")
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s is below reconnect_initial_s; raise reconnect_max_s")
        owners: dict[str, str] = {}
        names: set[str] = set()
        for bus in self.buses:
            label = bus.name or bus.endpoint
            if label in names:
                raise ValueError(f"two buses are both {label!r}; give them different name (or endpoints)")
            names.add(label)
            for device in bus.devices:
                if device.id in owners:
                    raise ValueError(
                        f"device id {device.id!r} is configured twice (buses {owners[device.id]!r} and {label!r}); "
                        "each device id must be unique"
                    )
                owners[device.id] = label
        return self
