"""Organisations, gateways and devices: what clients send to register them and what the API answers."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from cloud_agent.api.schemas.common import LocationModel, Request
from device_registry.lifecycle import State
from device_registry.models import (
    Certificate,
    Completeness,
    Device,
    Gateway,
    HardwareReplacement,
    Organisation,
    Presence,
)


class OrganisationOut(BaseModel):
    id: str
    name: str
    created_at: datetime

    @classmethod
    def of(cls, organisation: Organisation) -> OrganisationOut:
        return cls(id=organisation.id, name=organisation.name, created_at=organisation.created_at)


class OrganisationCreate(Request):
    id: str = Field(description="Short lowercase id, e.g. kakogawa.", examples=["kakogawa"])
    name: str = Field(examples=["Kakogawa City"])


class GatewayOut(BaseModel):
    id: str
    organisation: str
    state: State
    state_changed_at: datetime
    hardware_serial: str | None
    owner: str | None
    location: LocationModel
    labels: dict[str, str]
    created_at: datetime
    refused_readings: int = Field(description="Readings refused while the gateway was not provisioned or active.")

    @classmethod
    def of(cls, gateway: Gateway) -> GatewayOut:
        return cls(
            id=gateway.id,
            organisation=gateway.organisation_id,
            state=gateway.state,
            state_changed_at=gateway.state_changed_at,
            hardware_serial=gateway.hardware_serial,
            owner=gateway.owner,
            location=LocationModel.of(gateway.location),
            labels=dict(gateway.labels),
            created_at=gateway.created_at,
            refused_readings=gateway.refused_readings,
        )


class PresenceOut(BaseModel):
    online: bool
    changed_at: float = Field(description="When online last changed (epoch seconds).")
    last_seen: float = Field(description="When the agent last heard from the gateway (epoch seconds).")
    reason: str = Field(description="connected, heartbeat, shutdown, will or heartbeat_timeout.")
    health: dict[str, Any]

    @classmethod
    def of(cls, presence: Presence) -> PresenceOut:
        return cls(
            online=presence.online,
            changed_at=presence.changed_at,
            last_seen=presence.last_seen,
            reason=presence.reason,
            health=dict(presence.health),
        )


class CertificateOut(BaseModel):
    serial: str
    not_after: datetime
    status: str = Field(description="active or revoked (an expired certificate stays active: see not_after).")
    issued_at: datetime
    revoked_at: datetime | None
    revocation_reason: str | None

    @classmethod
    def of(cls, certificate: Certificate) -> CertificateOut:
        return cls(
            serial=certificate.serial,
            not_after=certificate.not_after,
            status=certificate.status,
            issued_at=certificate.issued_at,
            revoked_at=certificate.revoked_at,
            revocation_reason=certificate.revocation_reason,
        )


class GatewayDetail(GatewayOut):
    presence: PresenceOut | None = Field(description="Null when the agent never heard from the gateway.")
    certificates: list[CertificateOut]


class GatewayCreate(Request):
    id: str = Field(examples=["gw-kakogawa-0012"])
    organisation: str = Field(examples=["kakogawa"])
    hardware_serial: str | None = None
    owner: str | None = None
    location: LocationModel | None = None
    labels: dict[str, str] = Field(default_factory=dict, examples=[{"zone": "north"}])


class DeviceOut(BaseModel):
    id: str
    organisation: str
    kind: str
    profile: str | None
    state: State
    state_changed_at: datetime
    gateway: str | None
    hardware_serial: str | None
    owner: str | None
    location: LocationModel
    labels: dict[str, str]
    consent: bool | None = Field(description="Watch tags only; null for other kinds.")
    retention_s: int | None = Field(description="How long history is kept; null means the registry default.")
    created_at: datetime
    refused_readings: int

    @classmethod
    def of(cls, device: Device) -> DeviceOut:
        return cls(
            id=device.id,
            organisation=device.organisation_id,
            kind=device.kind,
            profile=device.profile,
            state=device.state,
            state_changed_at=device.state_changed_at,
            gateway=device.gateway_id,
            hardware_serial=device.hardware_serial,
            owner=device.owner,
            location=LocationModel.of(device.location),
            labels=dict(device.labels),
            consent=device.consent,
            retention_s=None if device.retention is None else int(device.retention.total_seconds()),
            created_at=device.created_at,
            refused_readings=device.refused_readings,
        )


class DeviceCreate(Request):
    id: str = Field(examples=["wl-0007"])
    organisation: str = Field(examples=["kakogawa"])
    kind: str = Field(description="A code: water_level, energy_meter, valve, node, watch_tag, ...")
    profile: str | None = Field(default=None, description="Hardware catalogue entry, e.g. sdm120.")
    hardware_serial: str | None = None
    owner: str | None = None
    location: LocationModel | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    gateway: str | None = Field(default=None, description="Bind at once to this gateway (the device is provisioned).")
    consent: bool | None = Field(default=None, description="Watch tags: whether consent is recorded (required).")
    retention_s: int | None = Field(default=None, ge=1, description="History retention; required for watch tags.")

    @property
    def retention(self) -> timedelta | None:
        return None if self.retention_s is None else timedelta(seconds=self.retention_s)


class BindRequest(Request):
    gateway: str = Field(description="The gateway that may report for the device.")
    reason: str = Field(min_length=1, examples=["installed at the Kakogawa river gauge"])


class ConsentRequest(Request):
    consent: bool
    reason: str = Field(min_length=1, examples=["consent form signed by the family"])


class HardwareReplacementRequest(Request):
    hardware_serial: str = Field(description="Serial of the new hardware.")
    reason: str = Field(min_length=1, examples=["board flooded"])


class HardwareReplacementOut(BaseModel):
    entity: str
    old_serial: str | None
    new_serial: str
    revoked_serials: list[str] = Field(description="Certificates of the old hardware, revoked (CRL republished).")

    @classmethod
    def of(cls, replacement: HardwareReplacement) -> HardwareReplacementOut:
        return cls(
            entity=replacement.entity_id,
            old_serial=replacement.old_serial,
            new_serial=replacement.new_serial,
            revoked_serials=list(replacement.revoked_serials),
        )


class GapOut(BaseModel):
    from_seq: int
    to_seq: int
    count: int
    reason: str


class SeqRangeOut(BaseModel):
    first: int
    last: int


class CompletenessOut(BaseModel):
    gateway: str
    floor: int = Field(description="Sequence numbers up to here were pruned with old history.")
    highest_seq: int
    received: int
    reported_gaps: list[GapOut]
    missing: list[SeqRangeOut] = Field(description="Ranges neither received nor covered by a gap report.")
    missing_count: int
    reported_lost_readings: int
    complete: bool

    @classmethod
    def of(cls, found: Completeness) -> CompletenessOut:
        return cls(
            gateway=found.gateway_id,
            floor=found.floor,
            highest_seq=found.highest_seq,
            received=found.received,
            reported_gaps=[
                GapOut(from_seq=g.from_seq, to_seq=g.to_seq, count=g.count, reason=g.reason)
                for g in found.reported_gaps
            ],
            missing=[SeqRangeOut(first=r.first, last=r.last) for r in found.missing],
            missing_count=found.missing_count,
            reported_lost_readings=found.reported_lost_readings,
            complete=found.complete,
        )
