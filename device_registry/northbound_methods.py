"""The registry's northbound outbox (mixed into :class:`~device_registry.Registry`): what the City OS has yet to get.

With ``Registry(northbound=True)`` every readings message that stored readings gets a row in ``northbound_outbox`` in
its ingest transaction, so nothing stored can be missed by the City OS feed. The agent's pusher takes pending rows
in order (:meth:`northbound_pending`), reads their readings back (:meth:`northbound_readings`), and then deletes the
rows the City OS accepted (:meth:`northbound_delivered`), postpones those to try again (:meth:`northbound_retry`), or
dead-letters those it refused for good (:meth:`northbound_dead`, kept with the reason for people to look at).

Watch tags leave only as aggregates and consented pseudonyms, computed from what is stored (so an agent restart
changes nothing): :meth:`watch_tag_counts` counts distinct tags per zone and hour in one grouped query over the
tags' readings (index ``readings(device_id, observed_at)``), :meth:`watch_tag_states` gives each tag's consent, state,
``share`` label and newest sighting (from ``latest``), :meth:`gateway_zones` each gateway's zone and position. The
zone of a sighting is the seeing gateway's ``zone`` label, else its id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from device_registry.database import reading, writing
from device_registry.lifecycle import WATCH_TAG, State
from device_registry.models import NorthboundDepth, NorthboundItem, StoredReading
from device_registry.readings import stored_reading
from device_registry.schema import devices, entities, entity_labels, latest, northbound_outbox, readings

PENDING = "pending"
DEAD = "dead"
ZONE_LABEL: Final = "zone"
SHARE_LABEL: Final = "share"
_HOUR: Final[sa.ColumnElement[int]] = sa.literal_column(
    "3600", sa.BigInteger
)  # a constant, not a bind parameter: the grouped expression stays one


@dataclass(frozen=True, slots=True)
class CrowdCount:
    """Distinct watch tags seen in a zone during the UTC hour starting at ``hour`` (epoch seconds)."""

    zone: str
    hour: int
    count: int


@dataclass(frozen=True, slots=True)
class GatewayZone:
    """A gateway's zone (its ``zone`` label, else its id) and position."""

    gateway_id: str
    zone: str
    latitude: float | None
    longitude: float | None


@dataclass(frozen=True, slots=True)
class WatchTagState:
    """What decides whether (and what) a watch tag may share: its record and its newest sighting."""

    tag_id: str
    consent: bool | None
    state: State
    share: str | None
    """The ``share`` label (consent scopes), if any."""
    retention_s: int | None
    last_seen: float | None
    """The newest observed time among its latest values (None: nothing stored, or retention removed it)."""
    gateway_id: str | None
    """The gateway of that newest value."""
    battery: float | None
    """Its latest ``battery`` value in %, if any."""
    battery_at: float | None


def _hour(dialect: str, column: sa.ColumnElement[float]) -> sa.ColumnElement[int]:
    """The start of the UTC hour holding an epoch-seconds column (``CAST`` truncates in SQLite, rounds in PG)."""
    if dialect == "postgresql":
        return sa.cast(sa.func.floor(column / _HOUR), sa.BigInteger) * _HOUR
    return sa.cast(column / _HOUR, sa.BigInteger) * _HOUR


def _zone_of(gateway_id: sa.ColumnElement[str], label: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
    return sa.func.coalesce(sa.func.nullif(label, sa.literal_column("''")), gateway_id)


def _watch_tags() -> sa.Select[tuple[str]]:
    return sa.select(devices.c.id).where(devices.c.kind == WATCH_TAG)


class _Registry(Protocol):
    engine: AsyncEngine

    def _now(self) -> datetime: ...


class NorthboundMethods:
    """The northbound outbox: pending, readings back, delivered, retry, dead letter, depth."""

    async def northbound_pending(
        self: _Registry, *, limit: int = 500, now: float | None = None, after: int = 0
    ) -> list[NorthboundItem]:
        """Pending messages due now, oldest first; ``after`` skips the ids up to it (already taken)."""
        at = self._now().timestamp() if now is None else float(now)
        stmt = (
            sa.select(northbound_outbox)
            .where(
                northbound_outbox.c.state == PENDING,
                northbound_outbox.c.not_before <= at,
                northbound_outbox.c.id > after,
            )
            .order_by(northbound_outbox.c.id)
            .limit(max(1, min(limit, 10_000)))
        )
        async with reading(self.engine) as conn:
            return [
                NorthboundItem(int(r.id), r.gateway_id, int(r.seq), float(r.queued_at), int(r.attempts))
                for r in (await conn.execute(stmt)).all()
            ]

    async def northbound_readings(
        self: _Registry, items: Sequence[NorthboundItem]
    ) -> dict[tuple[str, int], list[StoredReading]]:
        """The stored readings of each item's message (an empty list if retention already removed them)."""
        found: dict[tuple[str, int], list[StoredReading]] = {(i.gateway_id, i.seq): [] for i in items}
        if not items:
            return found
        by_gateway: dict[str, list[int]] = {}
        for item in items:
            by_gateway.setdefault(item.gateway_id, []).append(item.seq)
        async with reading(self.engine) as conn:
            for gateway_id, seqs in by_gateway.items():
                stmt = (
                    sa.select(readings)
                    .where(readings.c.gateway_id == gateway_id, readings.c.seq.in_(seqs))
                    .order_by(readings.c.seq, readings.c.id)
                )
                for row in (await conn.execute(stmt)).all():
                    found[(gateway_id, int(row.seq))].append(stored_reading(row))
        return found

    async def northbound_delivered(self: _Registry, ids: Sequence[int]) -> None:
        """The City OS accepted these: forget them."""
        if ids:
            async with writing(self.engine) as conn:
                await conn.execute(northbound_outbox.delete().where(northbound_outbox.c.id.in_(list(ids))))

    async def northbound_retry(self: _Registry, ids: Sequence[int], *, not_before: float, reason: str) -> None:
        """Try these again not before ``not_before`` (epoch seconds); counts the attempt and keeps the reason."""
        if ids:
            async with writing(self.engine) as conn:
                await conn.execute(
                    northbound_outbox.update()
                    .where(northbound_outbox.c.id.in_(list(ids)), northbound_outbox.c.state == PENDING)
                    .values(
                        attempts=northbound_outbox.c.attempts + 1, not_before=float(not_before), reason=reason[:1024]
                    )
                )

    async def northbound_dead(self: _Registry, ids: Sequence[int], *, reason: str) -> None:
        """The City OS refused these for good: keep them, marked dead with the reason, out of the pending queue."""
        if ids:
            async with writing(self.engine) as conn:
                await conn.execute(
                    northbound_outbox.update()
                    .where(northbound_outbox.c.id.in_(list(ids)))
                    .values(state=DEAD, attempts=northbound_outbox.c.attempts + 1, reason=reason[:1024])
                )

    async def northbound_depth(self: _Registry) -> NorthboundDepth:
        async with reading(self.engine) as conn:
            by_state = sa.select(northbound_outbox.c.state, sa.func.count()).group_by(northbound_outbox.c.state)
            counts: dict[str, int] = {str(state): int(count) for state, count in (await conn.execute(by_state)).all()}
            oldest = await conn.scalar(
                sa.select(sa.func.min(northbound_outbox.c.queued_at)).where(northbound_outbox.c.state == PENDING)
            )
        return NorthboundDepth(
            pending=int(counts.get(PENDING, 0)),
            dead=int(counts.get(DEAD, 0)),
            oldest_queued_at=None if oldest is None else float(oldest),
        )

    # -- watch tags: aggregates and consented pseudonyms (see the module doc) ----------------------------------

    async def watch_tag_counts(self: _Registry, *, since: float, until: float) -> list[CrowdCount]:
        """Distinct watch tags per zone and hour among stored readings observed in ``[since, until)``.

        Pass hour starts: a bound inside an hour counts only part of it.
        """
        zone_label = entity_labels.alias("zone_label")
        on = sa.and_(zone_label.c.entity_id == readings.c.gateway_id, zone_label.c.key == ZONE_LABEL)
        async with reading(self.engine) as conn:
            zone = _zone_of(readings.c.gateway_id, zone_label.c.value).label("crowd_zone")
            hour = _hour(conn.dialect.name, readings.c.observed_at).label("crowd_hour")
            stmt = (
                sa.select(zone, hour, sa.func.count(sa.distinct(readings.c.device_id)))
                .select_from(readings.outerjoin(zone_label, on))
                .where(
                    readings.c.device_id.in_(_watch_tags()),
                    readings.c.observed_at >= float(since),
                    readings.c.observed_at < float(until),
                )
                .group_by(sa.literal_column("crowd_zone"), sa.literal_column("crowd_hour"))
            )
            rows = (await conn.execute(stmt)).all()
        return [CrowdCount(str(z), int(h), int(n)) for z, h, n in rows]

    async def watch_tag_shortest_retention_s(self: _Registry) -> int | None:
        """The shortest retention period of any watch tag (readings older than it may be gone already)."""
        async with reading(self.engine) as conn:
            found = await conn.scalar(sa.select(sa.func.min(devices.c.retention_s)).where(devices.c.kind == WATCH_TAG))
        return None if found is None else int(found)

    async def gateway_zones(self: _Registry) -> list[GatewayZone]:
        """Every gateway's zone and position, by id."""
        label = entity_labels.alias("zone_label")
        on = sa.and_(label.c.entity_id == entities.c.id, label.c.key == ZONE_LABEL)
        stmt = (
            sa.select(entities.c.id, _zone_of(entities.c.id, label.c.value), entities.c.latitude, entities.c.longitude)
            .select_from(entities.outerjoin(label, on))
            .where(entities.c.role == "gateway")
            .order_by(entities.c.id)
        )
        async with reading(self.engine) as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            GatewayZone(str(i), str(z), None if lat is None else float(lat), None if lon is None else float(lon))
            for i, z, lat, lon in rows
        ]

    async def watch_tag_states(self: _Registry, *, sharing_only: bool = False) -> list[WatchTagState]:
        """Every watch tag (with ``sharing_only``: the consented, active ones with a ``share`` label), by id."""
        tags = _watch_tags()
        newest = (
            sa.select(latest.c.device_id, sa.func.max(latest.c.observed_at).label("seen"))
            .where(latest.c.device_id.in_(tags))
            .group_by(latest.c.device_id)
            .subquery("newest")
        )
        seen = (
            sa.select(latest.c.device_id, newest.c.seen, sa.func.min(latest.c.gateway_id).label("gateway_id"))
            .join(newest, sa.and_(newest.c.device_id == latest.c.device_id, newest.c.seen == latest.c.observed_at))
            .group_by(latest.c.device_id, newest.c.seen)
            .subquery("seen")
        )
        share = entity_labels.alias("share_label")
        battery = latest.alias("battery")
        battery_on = sa.and_(
            battery.c.device_id == devices.c.id, battery.c.quantity == "battery", battery.c.unit == "%"
        )
        stmt = (
            sa.select(
                devices.c.id,
                devices.c.consent,
                entities.c.state,
                share.c.value,
                devices.c.retention_s,
                seen.c.seen,
                seen.c.gateway_id,
                battery.c.num,
                battery.c.observed_at,
            )
            .select_from(
                devices.join(entities, entities.c.id == devices.c.id)
                .outerjoin(share, sa.and_(share.c.entity_id == devices.c.id, share.c.key == SHARE_LABEL))
                .outerjoin(seen, seen.c.device_id == devices.c.id)
                .outerjoin(battery, battery_on)
            )
            .where(devices.c.kind == WATCH_TAG)
            .order_by(devices.c.id)
        )
        if sharing_only:
            stmt = stmt.where(devices.c.consent.is_(True), entities.c.state == State.ACTIVE.value, share.c.value != "")
        async with reading(self.engine) as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            WatchTagState(
                tag_id=str(r[0]),
                consent=None if r[1] is None else bool(r[1]),
                state=State(r[2]),
                share=r[3],
                retention_s=None if r[4] is None else int(r[4]),
                last_seen=None if r[5] is None else float(r[5]),
                gateway_id=r[6],
                battery=None if r[7] is None else float(r[7]),
                battery_at=None if r[7] is None or r[8] is None else float(r[8]),
            )
            for r in rows
        ]
