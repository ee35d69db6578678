"""The readings write path: one transaction per batch of messages, from one gateway or from many.

The statements are set-based over the whole batch whatever the number of gateways in it (one lookup of every
entity mentioned, one claim of every sequence number, one insert of the history, one upsert of the latest values),
so that the cost of a transaction does not grow with the number of gateways that happen to share it.

1. Each gateway passes the traffic gate (:mod:`device_registry.traffic`): refused unless provisioned or active.
2. Each message's sequence number is claimed (``ON CONFLICT DO NOTHING``); messages already stored are skipped, so
   at-least-once delivery has an exactly-once effect.
3. Every device in the new messages is looked up once and judged:

   - a watch tag is stored only with an active consented record (provisioned or active, consent given); tags roam,
     so any gateway of the tag's organisation may report it; without a record nothing of it is stored, and the
     refusal is counted but not audited (an audit entry would itself record the sighting, and cannot be deleted);
   - any other device must be bound to this gateway (the gateway may also report about itself); anything else is
     rejected, counted and audited with the gateway as actor;
   - a bound device that is not provisioned or active is refused and counted on the device.

4. Accepted readings go to ``readings`` with one ``executemany`` and the newest reading of each (device, quantity)
   is upserted into ``latest``, keeping the newer one by (observed time, sequence number) whatever the delivery order.
"""

from __future__ import annotations

import enum
import functools
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncConnection

from device_registry import audit, traffic, validation
from device_registry.errors import NotFound
from device_registry.inventory import EntityRow, entities_by_id
from device_registry.lifecycle import ACCEPTS_TRAFFIC, WATCH_TAG, State
from device_registry.models import IngestResult, Received
from device_registry.schema import latest, northbound_outbox, readings
from device_registry.transitions import activate_if_provisioned
from kakehashi import wire

_AUDIT_SEQS: Final = 100  # sequence numbers listed in one rejection audit entry


class Verdict(enum.Enum):
    STORE = "store"
    UNBOUND = "unbound"
    UNBOUND_TAG = "unbound_tag"
    NO_CONSENT = "no_consent"
    INACTIVE = "inactive"


def value_columns(value: float | str | bool | bytes) -> tuple[float | None, str | None, bool | None, bytes | None]:
    """The value of a reading spread over (num, text, flag, data); exactly one is set."""
    if isinstance(value, bool):
        return None, None, value, None
    if isinstance(value, int | float):
        return float(value), None, None, None
    if isinstance(value, str):
        return None, value, None, None
    return None, None, None, bytes(value)


READING_COLUMNS: Final = (
    "device_id", "quantity", "observed_at", "received_at", "gateway_id", "seq", "clock", "unit", "num", "text",
    "flag", "data",
)  # fmt: skip
"""The columns of ``readings`` and ``latest`` the write path fills, in the order of :func:`_row`'s tuple."""
_OBSERVED, _SEQ = READING_COLUMNS.index("observed_at"), READING_COLUMNS.index("seq")

Row = tuple[Any, ...]


def _row(reading: wire.Reading, gateway_id: str, seq: int, received_at: float) -> Row:
    num, text, flag, data = value_columns(reading.value)
    return (
        reading.device_id, reading.quantity, reading.observed_at, received_at, gateway_id, seq, reading.clock.value,
        reading.unit, num, text, flag, data,
    )  # fmt: skip


def _placeholders(paramstyle: str, count: int) -> str:
    if paramstyle == "qmark":
        return ", ".join("?" for _ in range(count))
    if paramstyle == "numeric_dollar":
        return ", ".join(f"${index}" for index in range(1, count + 1))
    if paramstyle == "format":
        return ", ".join("%s" for _ in range(count))
    raise ValueError(f"the registry does not know the DB-API parameter style {paramstyle!r}")


@functools.cache
def _insert_history_sql(paramstyle: str) -> str:
    """The history insert as driver SQL: the hot path, executed with the driver's own ``executemany`` (SQLAlchemy's
    per-row parameter processing would cost more than the database's work here; every value is a plain type)."""
    columns = ", ".join(READING_COLUMNS)
    return f"INSERT INTO {readings.name} ({columns}) VALUES ({_placeholders(paramstyle, len(READING_COLUMNS))})"


@functools.cache
def _upsert_latest_sql(paramstyle: str) -> str:
    """The newest value per (device, quantity), kept by (observed time, sequence number) whatever the arrival order;
    the same ``INSERT .. ON CONFLICT .. DO UPDATE .. WHERE`` on SQLite and PostgreSQL."""
    columns = ", ".join(READING_COLUMNS)
    updated = ", ".join(
        f"{name} = excluded.{name}" for name in READING_COLUMNS if name not in ("device_id", "quantity")
    )
    newer = (
        f"excluded.observed_at > {latest.name}.observed_at OR "
        f"(excluded.observed_at = {latest.name}.observed_at AND excluded.seq > {latest.name}.seq)"
    )
    return (
        f"INSERT INTO {latest.name} ({columns}) VALUES ({_placeholders(paramstyle, len(READING_COLUMNS))}) "
        f"ON CONFLICT (device_id, quantity) DO UPDATE SET {updated} WHERE {newer}"
    )


def _judge(device_id: str, found: EntityRow | None, gateway: EntityRow) -> tuple[Verdict, str]:
    """The verdict on one device's readings from ``gateway``, and why (for the audit entry)."""
    if device_id == gateway.id:
        return Verdict.STORE, ""
    if found is None:
        return Verdict.UNBOUND, "not registered"
    if found.role != "device":
        return Verdict.UNBOUND, "another gateway"
    if found.kind == WATCH_TAG:
        if found.organisation_id != gateway.organisation_id:
            return Verdict.UNBOUND_TAG, "a watch tag of another organisation"
        if found.consent and found.state in ACCEPTS_TRAFFIC:
            return Verdict.STORE, ""
        return Verdict.NO_CONSENT, ""
    if found.gateway_id != gateway.id:
        bound = f"bound to gateway {found.gateway_id}" if found.gateway_id else "bound to no gateway"
        return Verdict.UNBOUND, bound
    if found.state not in ACCEPTS_TRAFFIC:
        return Verdict.INACTIVE, ""
    return Verdict.STORE, ""


def _dedupe(messages: Sequence[Received]) -> tuple[dict[int, Received], int]:
    """The first message of each sequence number, and how many repeats the batch itself held."""
    first: dict[int, Received] = {}
    repeats = 0
    for message in messages:
        validation.sequence_number(message.seq, "readings message seq")
        if message.seq in first:
            repeats += 1
        else:
            first[message.seq] = message
    return first, repeats


async def ingest(
    conn: AsyncConnection, gateway_id: str, messages: Sequence[Received], *, now: datetime
) -> IngestResult:
    """Store a batch of readings messages from ``gateway_id`` (see the module docstring)."""
    return (await ingest_many(conn, [(gateway_id, messages)], now=now))[0]


async def ingest_many(
    conn: AsyncConnection,
    batches: Sequence[tuple[str, Sequence[Received]]],
    *,
    now: datetime,
    northbound: bool = False,
) -> list[IngestResult]:
    """Store readings messages of several gateways; one :class:`IngestResult` per ``batches`` entry, in order.

    With ``northbound`` each message that stored readings is also queued in ``northbound_outbox``, in this same
    transaction, for delivery to the City OS.

    A gateway may appear more than once; its entries are merged (and their results then describe the merged batch,
    reported on its first entry, with empty results on the others). Raises :class:`NotFound` for an unknown gateway
    before writing anything.
    """
    merged: dict[str, list[Received]] = {}
    for gateway_id, messages in batches:
        merged.setdefault(gateway_id, []).extend(messages)
    mentioned = {reading.device_id for ms in merged.values() for message in ms for reading in message.readings}
    known = await entities_by_id(conn, mentioned | set(merged))
    for gateway_id in merged:
        found = known.get(gateway_id)
        if found is None or found.role != "gateway":
            raise NotFound(f"there is no gateway with id {gateway_id!r}")

    admitted: dict[str, EntityRow] = {}
    results: dict[str, IngestResult] = {}
    activated: dict[str, list[str]] = {}
    uniques: dict[str, dict[int, Received]] = {}
    repeats: dict[str, int] = {}
    for gateway_id in sorted(merged):
        gateway = known[gateway_id]
        total = sum(len(message.readings) for message in merged[gateway_id])
        admission = await traffic.admit_row(conn, gateway, now=now, refused_readings=total)
        if not admission.accepted:
            results[gateway_id] = IngestResult(rejected_inactive=total)
            continue
        admitted[gateway_id] = gateway
        activated[gateway_id] = [gateway_id] if admission.activated else []
        uniques[gateway_id], repeats[gateway_id] = _dedupe(merged[gateway_id])

    claims = [(gateway, seq, m.received_at) for gw, gateway in admitted.items() for seq, m in uniques[gw].items()]
    new_seqs = await traffic.claim_many(conn, claims, "readings")

    history: list[Row] = []
    newest: dict[tuple[str, str], Row] = {}
    queued: list[dict[str, Any]] = []
    moment = now.timestamp()
    judged: dict[str, dict[str, tuple[Verdict, str]]] = {}
    tallies: dict[str, _Tally] = {}
    for gateway_id, gateway in admitted.items():
        verdicts = judged[gateway_id] = {}
        tally = tallies[gateway_id] = _Tally()
        for seq, message in uniques[gateway_id].items():
            if (gateway_id, seq) not in new_seqs:
                continue
            tally.messages += 1
            for reading in message.readings:
                device_id = reading.device_id
                judgement = verdicts.get(device_id)
                if judgement is None:
                    judgement = verdicts[device_id] = _judge(device_id, known.get(device_id), gateway)
                if judgement[0] is not Verdict.STORE:
                    tally.counts[judgement[0]] += 1
                    tally.refused_per_device[device_id] += 1
                    tally.refused_seqs[device_id].add(seq)
                    continue
                row = _row(reading, gateway_id, seq, message.received_at)
                history.append(row)
                tally.stored += 1
                if northbound and (not queued or queued[-1]["seq"] != seq or queued[-1]["gateway_id"] != gateway_id):
                    queued.append(
                        {"gateway_id": gateway_id, "seq": seq, "queued_at": moment, "not_before": moment,
                         "state": "pending"}
                    )  # fmt: skip
                key = (device_id, reading.quantity)
                current = newest.get(key)
                if current is None or (row[_OBSERVED], row[_SEQ]) >= (current[_OBSERVED], current[_SEQ]):
                    newest[key] = row

    if history:
        paramstyle = conn.dialect.paramstyle
        await conn.exec_driver_sql(_insert_history_sql(paramstyle), history)
        await conn.exec_driver_sql(_upsert_latest_sql(paramstyle), [newest[key] for key in sorted(newest)])
    if queued:
        await conn.execute(northbound_outbox.insert(), queued)
    for gateway_id in admitted:
        tally = tallies[gateway_id]
        for device_id, (verdict, why) in judged[gateway_id].items():
            found = known.get(device_id)
            if device_id == gateway_id:
                continue  # the gateway itself passed the gate above
            if verdict is Verdict.STORE and found is not None and found.state is State.PROVISIONED:
                reason = f"first reading via gateway {gateway_id}"
                if await activate_if_provisioned(conn, found, reason=reason, now=now):
                    activated[gateway_id].append(device_id)
                    known[device_id] = replace(found, state=State.ACTIVE)
            elif verdict is Verdict.INACTIVE:
                await traffic.count_refused(conn, device_id, tally.refused_per_device[device_id])
            elif verdict in (Verdict.UNBOUND, Verdict.UNBOUND_TAG):
                seqs = sorted(tally.refused_seqs[device_id])
                count = tally.refused_per_device[device_id]
                await _audit_unbound(conn, gateway_id, device_id, verdict, why, count, seqs, now)
        unique = uniques[gateway_id]
        results[gateway_id] = IngestResult(
            messages=tally.messages,
            duplicates=repeats[gateway_id] + len(unique) - tally.messages,
            stored=tally.stored,
            rejected_unbound=tally.counts[Verdict.UNBOUND] + tally.counts[Verdict.UNBOUND_TAG],
            rejected_no_consent=tally.counts[Verdict.NO_CONSENT],
            rejected_inactive=tally.counts[Verdict.INACTIVE],
            activated=tuple(activated[gateway_id]),
        )
    answered: set[str] = set()
    out: list[IngestResult] = []
    for gateway_id, _ in batches:
        out.append(IngestResult() if gateway_id in answered else results[gateway_id])
        answered.add(gateway_id)
    return out


@dataclass
class _Tally:
    messages: int = 0
    stored: int = 0
    counts: Counter[Verdict] = field(default_factory=Counter)
    refused_per_device: Counter[str] = field(default_factory=Counter)
    refused_seqs: defaultdict[str, set[int]] = field(default_factory=lambda: defaultdict(set))


async def _audit_unbound(
    conn: AsyncConnection,
    gateway_id: str,
    device_id: str,
    verdict: Verdict,
    why: str,
    count: int,
    seqs: list[int],
    now: datetime,
) -> None:
    if verdict is Verdict.UNBOUND_TAG:
        reason = f"gateway {gateway_id} reported {count} readings for {why} (not named: watch tags are personal data)"
        detail: wire.JSONObject = {"device_kind": WATCH_TAG, "readings": count}
    else:
        reason = f"gateway {gateway_id} reported {count} readings for device {device_id}, which is {why}"
        listed = audit.json_list(seqs[:_AUDIT_SEQS])
        detail = {"device": device_id, "readings": count, "seqs": listed, "more_seqs": len(seqs) > _AUDIT_SEQS}
    await audit.append(
        conn,
        at=now,
        actor=gateway_id,
        action="ingest.rejected_unbound",
        entity_id=gateway_id,
        reason=reason,
        detail=detail,
    )
