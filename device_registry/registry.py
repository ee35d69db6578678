"""The registry's async API, as the cloud agent uses it: one method, one transaction, audited where people act.

Each method validates its arguments, opens one transaction (:func:`device_registry.database.writing` or
:func:`~device_registry.database.reading`), composes the operations of the modules beside this one, and returns
frozen dataclasses (:mod:`device_registry.models`). Refusals raise :class:`~device_registry.errors.RegistryError`
subclasses; where a refusal must still leave a trace (a refused enrollment token, a stale reported version that was
nevertheless received), the transaction commits first and the error is raised after.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Final, Self

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from device_registry import (
    access,
    audit,
    certificates,
    completeness,
    enrollment,
    ingest,
    inventory,
    listing,
    presence,
    readings,
    retention,
    traffic,
    transitions,
    twin,
    validation,
)
from device_registry.command_methods import CommandMethods
from device_registry.database import Synchronous, open_registry, reading, writing
from device_registry.errors import InvalidInput, RegistryError, StaleVersion, TokenRefused, TrafficRefused
from device_registry.lifecycle import WATCH_TAG, State
from device_registry.migrations import check_schema
from device_registry.migrations import migrate as run_migrations
from device_registry.models import (
    ApiPrincipal,
    ApiRole,
    ApiToken,
    AuditEntry,
    Certificate,
    Completeness,
    DesiredDelta,
    Device,
    GapRecord,
    Gateway,
    HardwareReplacement,
    IngestResult,
    Location,
    Organisation,
    Page,
    Presence,
    PresenceChange,
    PurgeResult,
    Received,
    StoredReading,
    Transition,
    Twin,
)
from device_registry.northbound_methods import NorthboundMethods
from device_registry.snapshot_methods import SnapshotMethods
from kakehashi import wire
from kakehashi.wire import JSONObject

DEFAULT_RETENTION: Final = timedelta(days=400)
"""History kept for devices without a retention period of their own (a year and a season, for year-on-year views)."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Registry(CommandMethods, NorthboundMethods, SnapshotMethods):
    """Gateways, devices, lifecycle, certificates, enrollment, twins, commands, readings and audit on one database.

    The command methods come from :class:`~device_registry.command_methods.CommandMethods`.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Callable[[], datetime] = _utc_now,
        default_retention: timedelta = DEFAULT_RETENTION,
        northbound: bool = False,
    ) -> None:
        self.engine = engine
        self._clock = clock
        seconds = validation.retention(default_retention)
        assert seconds is not None
        self.default_retention_s = seconds
        self.northbound = northbound
        """Queue every stored readings message for the City OS (``northbound_outbox``) in its ingest transaction."""

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        migrate: bool = True,
        clock: Callable[[], datetime] = _utc_now,
        default_retention: timedelta = DEFAULT_RETENTION,
        synchronous: Synchronous = "FULL",
        northbound: bool = False,
    ) -> Self:
        """Open the registry at ``url``, migrating its schema (or, with ``migrate=False``, checking it is current)."""
        engine = open_registry(url, synchronous=synchronous)
        try:
            if migrate:
                await run_migrations(engine)
            else:
                await check_schema(engine)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine, clock=clock, default_retention=default_retention, northbound=northbound)

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise RegistryError("the registry clock returned a naive datetime: it must return aware UTC times")
        return now.astimezone(UTC)

    # ------------------------------------------------------------------------------------------------------------
    # Organisations, gateways, devices

    async def create_organisation(self, organisation_id: str, name: str, *, actor: str) -> Organisation:
        validation.entity_id(organisation_id)
        validation.text(name, "organisation name")
        now = self._now()
        async with writing(self.engine) as conn:
            created = await inventory.create_organisation(conn, organisation_id, name, now)
            await audit.append(
                conn,
                at=now,
                actor=actor,
                action="organisation.created",
                entity_id=organisation_id,
                reason=f"organisation {organisation_id} created",
                detail={"organisation": organisation_id, "name": name},
            )
        return created

    async def get_organisation(self, organisation_id: str) -> Organisation:
        async with reading(self.engine) as conn:
            return await inventory.organisation(conn, organisation_id)

    async def list_organisations(self, *, after: str | None = None, limit: int = 100) -> Page[Organisation]:
        async with reading(self.engine) as conn:
            return await listing.list_organisations(conn, after=after, limit=limit)

    async def create_gateway(
        self,
        gateway_id: str,
        organisation_id: str,
        *,
        actor: str,
        hardware_serial: str | None = None,
        owner: str | None = None,
        location: Location | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Gateway:
        validation.entity_id(gateway_id)
        where, tags = validation.location(location), validation.labels(labels)
        validation.text(hardware_serial, "hardware serial", limit=128)
        validation.text(owner, "owner")
        now = self._now()
        async with writing(self.engine) as conn:
            await inventory.create_gateway(
                conn,
                gateway_id=gateway_id,
                organisation_id=organisation_id,
                hardware_serial=hardware_serial,
                owner=owner,
                location=where,
                labels=tags,
                now=now,
            )
            await audit.append(
                conn,
                at=now,
                actor=actor,
                action="gateway.created",
                entity_id=gateway_id,
                reason=f"gateway {gateway_id} registered",
                detail={"organisation": organisation_id, "hardware_serial": hardware_serial},
            )
            return await inventory.gateway(conn, gateway_id)

    async def get_gateway(self, gateway_id: str) -> Gateway:
        async with reading(self.engine) as conn:
            return await inventory.gateway(conn, gateway_id)

    async def list_gateways(
        self,
        *,
        organisation: str | None = None,
        state: State | None = None,
        labels: Mapping[str, str] | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> Page[Gateway]:
        async with reading(self.engine) as conn:
            return await listing.list_gateways(
                conn, organisation_id=organisation, state=state, labels=labels, after=after, limit=limit
            )

    async def create_device(
        self,
        device_id: str,
        organisation_id: str,
        kind: str,
        *,
        actor: str,
        profile: str | None = None,
        hardware_serial: str | None = None,
        owner: str | None = None,
        location: Location | None = None,
        labels: Mapping[str, str] | None = None,
        gateway_id: str | None = None,
        consent: bool | None = None,
        retention: timedelta | None = None,
    ) -> Device:
        """Register a device; with ``gateway_id`` it is bound at once (and so provisioned)."""
        validation.entity_id(device_id)
        validation.kind(kind)
        where, tags = validation.location(location), validation.labels(labels)
        validation.text(profile, "hardware profile", limit=64)
        validation.text(hardware_serial, "hardware serial", limit=128)
        validation.text(owner, "owner")
        retention_s = validation.retention(retention)
        now = self._now()
        async with writing(self.engine) as conn:
            await inventory.create_device(
                conn,
                device_id=device_id,
                organisation_id=organisation_id,
                kind=kind,
                profile=profile,
                hardware_serial=hardware_serial,
                owner=owner,
                location=where,
                labels=tags,
                consent=consent,
                retention_s=retention_s,
                now=now,
            )
            await audit.append(
                conn,
                at=now,
                actor=actor,
                action="device.created",
                entity_id=device_id,
                reason=f"{kind} {device_id} registered",
                detail={
                    "organisation": organisation_id,
                    "kind": kind,
                    "profile": profile,
                    "hardware_serial": hardware_serial,
                    "consent": consent,
                    "retention_s": retention_s,
                },
            )
            if gateway_id is not None:
                await self._bind(conn, device_id, gateway_id, actor=actor, reason="bound when registered", now=now)
            return await inventory.device(conn, device_id)

    async def get_device(self, device_id: str) -> Device:
        async with reading(self.engine) as conn:
            return await inventory.device(conn, device_id)

    async def list_devices(
        self,
        *,
        organisation: str | None = None,
        kind: str | None = None,
        state: State | None = None,
        gateway: str | None = None,
        labels: Mapping[str, str] | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> Page[Device]:
        async with reading(self.engine) as conn:
            return await listing.list_devices(
                conn,
                organisation_id=organisation,
                kind=kind,
                state=state,
                gateway_id=gateway,
                labels=labels,
                after=after,
                limit=limit,
            )

    async def bind_device(self, device_id: str, gateway_id: str, *, actor: str, reason: str) -> Device:
        """Bind a device to the gateway that may report for it; a registered device becomes provisioned.

        A device moving to another gateway has its whole desired document queued for the new gateway.
        """
        now = self._now()
        async with writing(self.engine) as conn:
            await self._bind(conn, device_id, gateway_id, actor=actor, reason=reason, now=now)
            return await inventory.device(conn, device_id)

    async def _bind(
        self, conn: AsyncConnection, device_id: str, gateway_id: str, *, actor: str, reason: str, now: datetime
    ) -> None:
        device = await inventory.entity(conn, device_id, lock=True, role="device")
        gateway = await inventory.entity(conn, gateway_id, role="gateway")
        for row in (device, gateway):
            if row.state is State.DECOMMISSIONED:
                raise InvalidInput(f"{row.subject} is decommissioned: it cannot be bound")
        if device.gateway_id == gateway_id:
            return
        await inventory.bind(conn, device_id, gateway_id, now)
        await audit.append(
            conn,
            at=now,
            actor=actor,
            action="device.bound",
            entity_id=device_id,
            reason=reason,
            detail={"from_gateway": device.gateway_id, "to_gateway": gateway_id},
        )
        await transitions.provision_if_registered(
            conn, device_id, actor=actor, reason=f"bound to gateway {gateway_id}", now=now
        )
        if device.gateway_id is not None:
            moved = await inventory.entity(conn, device_id)
            await twin.resend_desired(conn, moved, actor=actor, now=now)

    async def set_consent(self, device_id: str, consent: bool, *, actor: str, reason: str) -> Device:
        """Record that consent for a watch tag was given or withdrawn; without it nothing of the tag is stored."""
        now = self._now()
        async with writing(self.engine) as conn:
            device = await inventory.entity(conn, device_id, lock=True, role="device")
            if device.kind != WATCH_TAG:
                raise InvalidInput(f"device {device_id} is a {device.kind}: only watch tags carry a consent flag")
            await inventory.set_consent(conn, device_id, consent)
            await audit.append(
                conn,
                at=now,
                actor=actor,
                action="device.consent",
                entity_id=device_id,
                reason=reason,
                detail={"consent": consent},
            )
            return await inventory.device(conn, device_id)

    async def replace_hardware(
        self, device_id: str, new_hardware_serial: str, actor: str, reason: str
    ) -> HardwareReplacement:
        """Swap broken hardware: same id, history, twin and binding; the old hardware's certificates are revoked."""
        validation.text(new_hardware_serial, "hardware serial", limit=128)
        now = self._now()
        async with writing(self.engine) as conn:
            row = await inventory.entity(conn, device_id, lock=True)
            if row.state is State.DECOMMISSIONED:
                raise InvalidInput(f"{row.subject} is decommissioned: its hardware cannot be replaced")
            if row.hardware_serial == new_hardware_serial:
                raise InvalidInput(f"{row.subject} already has hardware serial {new_hardware_serial}")
            await inventory.check_serial_free(conn, new_hardware_serial, owner=device_id)
            await inventory.set_hardware_serial(conn, device_id, new_hardware_serial)
            revoked = await certificates.revoke_all(conn, device_id, reason=f"hardware replaced: {reason}", now=now)
            await audit.append(
                conn,
                at=now,
                actor=actor,
                action="entity.hardware_replaced",
                entity_id=device_id,
                reason=reason,
                detail={
                    "old_serial": row.hardware_serial,
                    "new_serial": new_hardware_serial,
                    "revoked": audit.json_list(revoked),
                },
            )
        return HardwareReplacement(device_id, row.hardware_serial, new_hardware_serial, tuple(revoked))

    # ------------------------------------------------------------------------------------------------------------
    # Lifecycle and certificates

    async def transition(self, entity_id: str, to_state: State, actor: str, reason: str) -> Transition:
        """Move a gateway or device to ``to_state`` (audited) or raise :class:`IllegalTransition` saying why not."""
        target = State(to_state)
        audit.check_actor(actor)
        audit.check_reason(reason)
        now = self._now()
        async with writing(self.engine) as conn:
            return await transitions.apply(conn, entity_id, target, actor=actor, reason=reason, now=now)

    async def record_certificate(self, entity_id: str, serial: str, not_after: datetime, *, actor: str) -> Certificate:
        """Record a certificate the CA issued; a registered entity becomes provisioned."""
        serial = validation.serial(serial)
        not_after = validation.aware(not_after, "not_after")
        now = self._now()
        async with writing(self.engine) as conn:
            row = await inventory.entity(conn, entity_id, lock=True)
            if row.state is State.DECOMMISSIONED:
                raise InvalidInput(f"{row.subject} is decommissioned: no certificate can be issued to it")
            recorded = await certificates.record(conn, entity_id=entity_id, serial=serial, not_after=not_after, now=now)
            await audit.append(
                conn,
                at=now,
                actor=actor,
                action="certificate.recorded",
                entity_id=entity_id,
                reason=f"certificate {serial} issued",
                detail={"serial": serial, "not_after": not_after.isoformat()},
            )
            if not_after > now:
                await transitions.provision_if_registered(
                    conn, entity_id, actor=actor, reason=f"certificate {serial} issued", now=now
                )
        return recorded

    async def revoke_certificate(self, serial: str, *, actor: str, reason: str) -> Certificate:
        """Revoke one certificate (republish the CRL afterwards); revoking a revoked one changes nothing."""
        serial = validation.serial(serial)
        audit.check_reason(reason)
        now = self._now()
        async with writing(self.engine) as conn:
            found = await certificates.get(conn, serial, lock=True)
            if await certificates.revoke(conn, [serial], reason=reason, now=now):
                await audit.append(
                    conn,
                    at=now,
                    actor=actor,
                    action="certificate.revoked",
                    entity_id=found.entity_id,
                    reason=reason,
                    detail={"serial": serial},
                )
            return await certificates.get(conn, serial)

    async def certificates(self, entity_id: str) -> list[Certificate]:
        async with reading(self.engine) as conn:
            return await certificates.of_entity(conn, entity_id)

    # ------------------------------------------------------------------------------------------------------------
    # Enrollment tokens

    async def create_enrollment_token(
        self, gateway_id: str, *, actor: str, ttl: timedelta = timedelta(hours=24)
    ) -> str:
        """A one-time token with which the Pi of ``gateway_id`` enrolls; returned once, stored only hashed."""
        now = self._now()
        async with writing(self.engine) as conn:
            gateway = await inventory.entity(conn, gateway_id, role="gateway")
            if gateway.state is State.DECOMMISSIONED:
                raise InvalidInput(f"gateway {gateway_id} is decommissioned: it cannot enroll")
            token, expires_at = await enrollment.create(conn, gateway_id, ttl=ttl, actor=actor, now=now)
            await audit.append(
                conn,
                at=now,
                actor=actor,
                action="enrollment.token_created",
                entity_id=gateway_id,
                reason=f"enrollment token for {gateway_id}",
                detail={"expires_at": expires_at.isoformat(), "token_sha256": enrollment.token_hash(token)[:12]},
            )
        return token

    async def consume_enrollment_token(self, token: str, gateway_id: str) -> None:
        """Use a token for ``gateway_id`` exactly once; raises :class:`TokenRefused` (audited) otherwise."""
        now = self._now()
        async with writing(self.engine) as conn:
            gateway = await inventory.entity(conn, gateway_id, role="gateway")
            # the token first: only someone holding a valid token for this gateway learns its lifecycle state
            refusal = await enrollment.consume(conn, token, gateway_id, now=now)
            if refusal is None and gateway.state is State.DECOMMISSIONED:
                refusal = TokenRefused(
                    f"gateway {gateway_id} is decommissioned: it cannot enroll", reason="gateway_decommissioned"
                )
            await audit.append(
                conn,
                at=now,
                actor=gateway_id,
                action="enrollment.token_consumed" if refusal is None else "enrollment.token_refused",
                entity_id=gateway_id,
                reason="enrollment token used" if refusal is None else refusal.message,
                detail={
                    "token_sha256": enrollment.token_hash(token)[:12],
                    "refusal": None if refusal is None else refusal.reason,
                },
            )
        if refusal is not None:
            raise refusal

    # ------------------------------------------------------------------------------------------------------------
    # Twins

    async def set_desired(self, entity_id: str, delta: JSONObject, actor: str) -> int:
        """Merge ``delta`` into the desired document of a gateway or device; returns the gateway version it takes."""
        now = self._now()
        async with writing(self.engine) as conn:
            target = await inventory.entity(conn, entity_id, lock=True)
            if target.state is State.DECOMMISSIONED:
                raise InvalidInput(f"{target.subject} is decommissioned: its desired state cannot change")
            queued = await twin.set_desired(conn, target, delta, actor=actor, now=now)
            await audit.append(
                conn,
                at=now,
                actor=actor,
                action="twin.desired",
                entity_id=entity_id,
                reason=f"desired state of {target.subject} changed (gateway version {queued.version})",
                detail={"gateway": queued.gateway_id, "version": queued.version, "delta": delta},
            )
        return queued.version

    async def pending_desired(self, gateway_id: str) -> list[DesiredDelta]:
        """Desired deltas the gateway has not yet reported as applied, oldest first."""
        async with reading(self.engine) as conn:
            await inventory.entity(conn, gateway_id, role="gateway")
            return await twin.pending(conn, gateway_id)

    async def gateways_with_pending_desired(self) -> list[str]:
        """Gateways with desired deltas they have not yet reported as applied."""
        async with reading(self.engine) as conn:
            return await twin.gateways_with_pending(conn)

    async def merge_reported(
        self,
        gateway_id: str,
        version: int,
        state: JSONObject,
        *,
        seq: int | None = None,
        received_at: float | None = None,
    ) -> Twin:
        """Merge the gateway's reported state at ``version``; raises :class:`StaleVersion` for a stale version.

        With ``seq`` (the message's sequence number) the message is deduplicated and counted for completeness in
        the same transaction; a repeated ``seq`` changes nothing.
        """
        now = self._now()
        stale: StaleVersion | None = None
        async with writing(self.engine) as conn:
            admission = await traffic.admit(conn, gateway_id, now=now)
            if not admission.accepted:
                raise TrafficRefused(f"gateway {gateway_id} is {admission.gateway.state}: its reports are refused")
            new = seq is None or await traffic.claim_one(
                conn, admission.gateway, validation.sequence_number(seq, "seq"), self._received(received_at), "reported"
            )
            if new:
                result = await twin.merge_reported(conn, gateway_id, version, state, now=now)
                if result.outcome is twin.ReportOutcome.STALE:
                    stale = StaleVersion(
                        f"gateway {gateway_id} reported version {version}, older than the version "
                        f"{result.stored_version} it already reported: refused as stale",
                        reason="stale_version",
                    )
                elif result.outcome is twin.ReportOutcome.UNKNOWN:
                    stale = StaleVersion(
                        f"gateway {gateway_id} reported version {version}, but the newest desired version issued "
                        f"to it is {result.issued_version}: refused",
                        reason="unknown_version",
                    )
            current = await twin.twin(conn, admission.gateway)
        if stale is not None:
            raise stale
        return current

    async def get_twin(self, entity_id: str) -> Twin:
        async with reading(self.engine) as conn:
            return await twin.twin(conn, await inventory.entity(conn, entity_id))

    # ------------------------------------------------------------------------------------------------------------
    # Readings, messages, completeness, retention

    def _received(self, received_at: float | None) -> float:
        return self._now().timestamp() if received_at is None else float(received_at)

    async def ingest_readings(
        self, gateway_id: str, batch: Sequence[tuple[int, float, Sequence[wire.Reading]]]
    ) -> IngestResult:
        """Store a batch of readings messages ``(seq, received_at, readings)`` from one gateway in one transaction.

        Pass several messages per call to amortise the commit; see :mod:`device_registry.ingest` for the rules.
        """
        messages = [item if isinstance(item, Received) else Received(*item) for item in batch]
        now = self._now()
        async with writing(self.engine) as conn:
            return (await ingest.ingest_many(conn, [(gateway_id, messages)], now=now, northbound=self.northbound))[0]

    async def ingest_many(
        self,
        batches: Sequence[tuple[str, Sequence[Received | tuple[int, float, Sequence[wire.Reading]]]]],
        *,
        seen: Mapping[str, float] | None = None,
    ) -> list[IngestResult]:
        """Store readings messages of several gateways in ONE transaction (the agent's batched write path).

        ``batches`` pairs a gateway id with its messages; results come back in the same order. ``seen`` refreshes
        the gateways' ``last_seen`` (see :mod:`device_registry.presence`) in the same transaction. Any refusal
        (an unknown gateway, an invalid sequence number) rolls the whole transaction back and is raised: the caller
        then retries gateway by gateway with :meth:`ingest_readings` so that one bad gateway cannot hold up the rest.
        Rows are written in key order so that concurrent agents take row locks in one order.
        """
        checked = [
            (gateway_id, [item if isinstance(item, Received) else Received(*item) for item in batch])
            for gateway_id, batch in batches
        ]
        now = self._now()
        async with writing(self.engine) as conn:
            results = await ingest.ingest_many(conn, checked, now=now, northbound=self.northbound) if checked else []
            if seen:
                await presence.touch(conn, seen)
        return results

    async def mark_received(self, gateway_id: str, seq: int, *, channel: str, received_at: float | None = None) -> bool:
        """Count an uplink message of another channel (events, acks) for dedupe and completeness; True if new."""
        validation.code(channel, "channel")
        validation.sequence_number(seq, "seq")
        now = self._now()
        async with writing(self.engine) as conn:
            admission = await traffic.admit(conn, gateway_id, now=now)
            if not admission.accepted:
                raise TrafficRefused(f"gateway {gateway_id} is {admission.gateway.state}: its messages are refused")
            return await traffic.claim_one(conn, admission.gateway, seq, self._received(received_at), channel)

    async def record_gap(self, gateway_id: str, from_seq: int, to_seq: int, count: int, reason: str) -> bool:
        """Record that the gateway dropped messages ``from_seq..to_seq`` (``count`` readings); False if known."""
        return await self.record_gaps(gateway_id, [GapRecord(from_seq, to_seq, count, reason)]) == 1

    async def record_gaps(
        self,
        gateway_id: str,
        gaps: Sequence[GapRecord],
        *,
        seq: int | None = None,
        received_at: float | None = None,
    ) -> int:
        """Record the gap reports of one events message (deduplicated by ``seq`` when given); returns new ones."""
        checked = [completeness.check_gap(gap) for gap in gaps]
        now = self._now()
        async with writing(self.engine) as conn:
            admission = await traffic.admit(conn, gateway_id, now=now)
            if not admission.accepted:
                raise TrafficRefused(f"gateway {gateway_id} is {admission.gateway.state}: its gap reports are refused")
            if seq is not None and not await traffic.claim_one(
                conn, admission.gateway, validation.sequence_number(seq, "seq"), self._received(received_at), "events"
            ):
                return 0
            return await completeness.record(conn, gateway_id, checked, now)

    async def record_events(
        self,
        gateway_id: str,
        seq: int,
        events: Sequence[wire.GapReport | wire.Event],
        *,
        received_at: float | None = None,
    ) -> int:
        """Record one events message exactly once: its gap reports for completeness, its other events in the audit
        log (actor = the gateway, action ``event.<kind>``). Returns how many items were new (0 for a repeat)."""
        gaps = [
            completeness.check_gap(GapRecord(e.from_seq, e.to_seq, e.count, e.reason))
            for e in events
            if isinstance(e, wire.GapReport)
        ]
        others = [e for e in events if isinstance(e, wire.Event)]
        now = self._now()
        async with writing(self.engine) as conn:
            admission = await traffic.admit(conn, gateway_id, now=now)
            if not admission.accepted:
                raise TrafficRefused(f"gateway {gateway_id} is {admission.gateway.state}: its events are refused")
            if not await traffic.claim_one(
                conn, admission.gateway, validation.sequence_number(seq, "seq"), self._received(received_at), "events"
            ):
                return 0
            new = await completeness.record(conn, gateway_id, gaps, now) if gaps else 0
            named = {e.device_id for e in others if e.device_id is not None}
            tags = {i for i, row in (await inventory.entities_by_id(conn, named)).items() if row.kind == WATCH_TAG}
            for event in others:
                detail: JSONObject = {"kind": event.kind, "at": event.at, "seq": seq, "attrs": event.attrs}
                if event.device_id in tags:  # watch tags are personal data: the audit log cannot forget them
                    event = wire.Event(event.kind, event.at, None, {})
                    detail = {"kind": event.kind, "at": event.at, "seq": seq, "device_kind": WATCH_TAG}
                elif event.device_id is not None:
                    detail["device"] = event.device_id
                await audit.append(
                    conn,
                    at=now,
                    actor=gateway_id,
                    action=f"event.{event.kind}"[:64],
                    entity_id=event.device_id or gateway_id,
                    reason=f"gateway {gateway_id} reported {event.kind}",
                    detail=detail,
                )
            return new + len(others)

    async def completeness(self, gateway_id: str) -> Completeness:
        async with reading(self.engine) as conn:
            return await completeness.completeness(conn, await inventory.entity(conn, gateway_id, role="gateway"))

    async def latest(self, device_id: str) -> list[StoredReading]:
        """The newest reading of each quantity of ``device_id`` (a gateway id gives the gateway's own readings)."""
        async with reading(self.engine) as conn:
            return await readings.latest_of(conn, device_id)

    async def history(
        self,
        device_id: str,
        *,
        quantity: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 1000,
    ) -> list[StoredReading]:
        async with reading(self.engine) as conn:
            return await readings.history(conn, device_id, quantity=quantity, since=since, until=until, limit=limit)

    async def purge_history(self, now: datetime | None = None, *, actor: str = audit.SYSTEM) -> PurgeResult:
        """Delete history and latest values past their retention at ``now`` (audited)."""
        at = self._now() if now is None else validation.aware(now, "now")
        async with writing(self.engine) as conn:
            result = await retention.purge(conn, now=at.timestamp(), default_retention_s=self.default_retention_s)
            await audit.append(
                conn,
                at=self._now(),
                actor=actor,
                action="retention.purged",
                entity_id=None,
                reason=f"retention run for {at.isoformat()}",
                detail={"readings": result.readings, "latest": result.latest, "messages": result.messages},
            )
        return result

    # ------------------------------------------------------------------------------------------------------------
    # Presence

    async def record_status(
        self, gateway_id: str, status: wire.StatusMessage, *, received_at: float | None = None
    ) -> PresenceChange:
        """Record a status message (or last will) received at ``received_at``; refused unless the gateway may talk.

        A status is an authenticated message: it makes a provisioned gateway active.
        """
        now = self._now()
        at = self._received(received_at)
        async with writing(self.engine) as conn:
            admission = await traffic.admit(conn, gateway_id, now=now)
            if not admission.accepted:
                raise TrafficRefused(f"gateway {gateway_id} is {admission.gateway.state}: its status is refused")
            return await presence.record_status(
                conn,
                gateway_id,
                online=status.state is wire.StatusState.ONLINE,
                reason=status.reason.value,
                health=status.health,
                now=at,
            )

    async def expire_presence(self, timeout_s: float, *, now: float | None = None) -> list[str]:
        """Mark offline the online gateways silent for ``timeout_s`` seconds; returns their ids."""
        if not timeout_s > 0:
            raise InvalidInput(f"heartbeat time-out {timeout_s} s must be more than zero")
        at = self._received(now)
        async with writing(self.engine) as conn:
            return await presence.expire(conn, now=at, timeout_s=timeout_s)

    async def get_presence(self, gateway_id: str) -> Presence | None:
        """The gateway's presence, or None if the agent never heard from it."""
        async with reading(self.engine) as conn:
            await inventory.entity(conn, gateway_id, role="gateway")
            return await presence.get(conn, gateway_id)

    async def presence_of(self, gateway_ids: Sequence[str]) -> dict[str, Presence]:
        """Presence of several gateways (those never heard from are missing)."""
        async with reading(self.engine) as conn:
            return await presence.of_gateways(conn, sorted(set(gateway_ids)))

    # ------------------------------------------------------------------------------------------------------------
    # API tokens

    async def create_api_token(
        self, name: str, role: ApiRole | str, *, actor: str, ttl: timedelta | None = None
    ) -> tuple[str, ApiToken]:
        """A new API token for ``name`` with ``role``; the secret is returned once and stored only hashed."""
        access.check_name(name)
        checked = access.check_role(role)
        audit.check_actor(actor)
        now = self._now()
        async with writing(self.engine) as conn:
            secret, token = await access.create(conn, name, checked, ttl=ttl, actor=actor, now=now)
            await audit.append(
                conn,
                at=now,
                actor=actor,
                action="api_token.created",
                entity_id=None,
                reason=f"API token {name} ({checked.value}) created",
                detail={
                    "name": name,
                    "role": checked.value,
                    "expires_at": None if token.expires_at is None else token.expires_at.isoformat(),
                },
            )
        return secret, token

    async def authenticate_api_token(self, secret: str) -> ApiPrincipal:
        """Who ``secret`` belongs to, or :class:`TokenRefused` saying why not."""
        now = self._now()
        async with reading(self.engine) as conn:
            return await access.authenticate(conn, secret, now=now)

    async def revoke_api_token(self, name: str, *, actor: str, reason: str) -> ApiToken:
        audit.check_reason(reason)
        now = self._now()
        async with writing(self.engine) as conn:
            token = await access.revoke(conn, name, now=now)
            await audit.append(
                conn,
                at=now,
                actor=actor,
                action="api_token.revoked",
                entity_id=None,
                reason=reason,
                detail={"name": name},
            )
        return token

    async def list_api_tokens(self) -> list[ApiToken]:
        async with reading(self.engine) as conn:
            return await access.listing(conn)

    # ------------------------------------------------------------------------------------------------------------
    # Audit

    async def append_audit(
        self, *, actor: str, action: str, entity_id: str | None, reason: str, detail: JSONObject | None = None
    ) -> AuditEntry:
        """Append an entry for something done outside the registry (a command sent, a CRL published, ...)."""
        validation.text(action, "audit action", limit=64)
        now = self._now()
        async with writing(self.engine) as conn:
            return await audit.append(
                conn, at=now, actor=actor, action=action, entity_id=entity_id, reason=reason, detail=detail
            )

    async def audit(
        self,
        *,
        entity: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        after: int | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Audit entries, oldest first, filtered; page with ``after`` = the id of the last entry seen."""
        since = None if since is None else validation.aware(since, "since")
        async with reading(self.engine) as conn:
            return await audit.query(
                conn, entity_id=entity, actor=actor, action=action, since=since, after_id=after, limit=limit
            )
