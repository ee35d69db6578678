"""Bulk registration of devices from CSV, for field roll-outs: parse, validate, create row by row, report per row.

The file is UTF-8 CSV (a byte-order mark is fine) with a header naming its columns in any order:

=================  ========  ==========================================================================
column             required  value
=================  ========  ==========================================================================
``id``             yes       the device id (``wl-0007``)
``organisation``   yes       an existing organisation id
``kind``           yes       ``water_level``, ``watch_tag``, ... (lowercase code)
``profile``                  hardware profile in the catalogue (``sdm120``)
``gateway``                  gateway to bind the device to (it is then provisioned)
``hardware_serial``          the hardware's serial number
``owner``                    who owns it
``latitude``                 WGS 84 degrees; give both or neither
``longitude``                WGS 84 degrees
``place``                    a place description
``labels``                   ``key=value;key=value``
``consent``                  watch tags only: ``yes``/``no`` (also ``true``/``false``, ``1``/``0``)
``retention_days``           history kept, in whole days (watch tags need it)
=================  ========  ==========================================================================

Empty cells mean "not given". Each row is one :meth:`~device_registry.Registry.create_device` call (its own
transaction, audited with the importing principal as actor), so one bad row never stops the others. Problems with
the file as a whole (encoding, header, more than :data:`MAX_ROWS` rows, more than :data:`MAX_BYTES` bytes) are one
:class:`CsvRefused`. The CLI prints an :class:`ImportReport` (got back as JSON: :meth:`ImportReport.from_json`) with
:func:`format_report`.
"""

from __future__ import annotations

import csv
import enum
import io
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar, Final

from device_registry import WATCH_TAG, Location, NotFound, Registry, RegistryError
from device_registry import validation as check
from kakehashi.errors import KakehashiError
from kakehashi.log import get_logger

__all__ = [
    "COLUMNS",
    "MAX_BYTES",
    "MAX_ROWS",
    "REQUIRED",
    "CsvRefused",
    "DeviceRow",
    "ImportReport",
    "RowError",
    "RowResult",
    "RowStatus",
    "format_report",
    "import_devices",
    "parse_csv",
    "parse_labels",
    "parse_row",
]

log = get_logger(__name__)

COLUMNS: Final = (
    "id",
    "organisation",
    "kind",
    "profile",
    "gateway",
    "hardware_serial",
    "owner",
    "latitude",
    "longitude",
    "place",
    "labels",
    "consent",
    "retention_days",
)
REQUIRED: Final = ("id", "organisation", "kind")
MAX_ROWS: Final = 10_000
MAX_BYTES: Final = 4 * 1024 * 1024
MAX_RETENTION_DAYS: Final = 36_500
_YES: Final = frozenset({"yes", "y", "true", "1"})
_NO: Final = frozenset({"no", "n", "false", "0"})


class CsvRefused(KakehashiError):
    """The file as a whole cannot be imported: ``csv_encoding``, ``csv_header``, ``csv_too_many_rows``,
    ``csv_too_large``, ``csv_empty`` or ``csv_malformed``; nothing was created."""

    reason = "csv_invalid"
    http_status: ClassVar[int] = 400


# ------------------------------------------------------------------------------------------------------ rows


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """One valid data row: what :meth:`Registry.create_device` gets."""

    row: int
    """Line number in the file (the header is line 1)."""
    id: str
    organisation: str
    kind: str
    profile: str | None = None
    gateway: str | None = None
    hardware_serial: str | None = None
    owner: str | None = None
    location: Location | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    consent: bool | None = None
    retention: timedelta | None = None


@dataclass(frozen=True, slots=True)
class RowError:
    """A data row that cannot be imported, before the registry is asked."""

    row: int
    id: str | None
    reason: str
    message: str


class _Problem(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _checked(column: str, call: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except KakehashiError as exc:
        raise _Problem(f"invalid_{column}", f"{column}: {exc.message}") from None


def _number(values: Mapping[str, str | None], column: str) -> float | None:
    text = values.get(column)
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        raise _Problem("invalid_location", f"{column} {text!r} is not a number (use a dot: 34.7567)") from None
    if not math.isfinite(number):
        raise _Problem("invalid_location", f"{column} {text!r} must be a finite number of degrees")
    return number


def parse_labels(text: str | None) -> dict[str, str]:
    """``key=value;key=value`` as a dict (keys and values stripped); a repeated key or a part without ``=`` fails."""
    if text is None:
        return {}
    labels: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise _Problem("invalid_labels", f"labels part {part.strip()!r} is not key=value (write zone=north;x=y)")
        if key in labels:
            raise _Problem("invalid_labels", f"label {key!r} is given twice")
        labels[key] = value
    checked: dict[str, str] = _checked("labels", check.labels, labels)
    return checked


def _consent(text: str | None) -> bool | None:
    if text is None:
        return None
    lowered = text.lower()
    if lowered in _YES:
        return True
    if lowered in _NO:
        return False
    raise _Problem("invalid_consent", f"consent {text!r} must be yes or no (or empty when not a watch tag)")


def _retention(text: str | None) -> timedelta | None:
    if text is None:
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_RETENTION_DAYS:
        raise _Problem(
            "invalid_retention", f"retention_days {text!r} must be whole days from 1 to {MAX_RETENTION_DAYS}"
        )
    return timedelta(days=int(text))


def _required(values: Mapping[str, str | None], column: str) -> str:
    value = values.get(column)
    if value is None:
        raise _Problem(f"missing_{column}", f"{column} is empty; every row needs id, organisation and kind")
    return value


def _device_row(row: int, values: Mapping[str, str | None]) -> DeviceRow:
    device_id = _checked("id", check.entity_id, _required(values, "id"))
    organisation = _checked("organisation", check.entity_id, _required(values, "organisation"))
    kind = _checked("kind", check.kind, _required(values, "kind"))
    gateway = values.get("gateway")
    if gateway is not None:
        _checked("gateway", check.entity_id, gateway)
    latitude, longitude, place = _number(values, "latitude"), _number(values, "longitude"), values.get("place")
    location = None
    if latitude is not None or longitude is not None or place is not None:
        location = _checked("location", check.location, Location(latitude, longitude, place))
    consent, retention = _consent(values.get("consent")), _retention(values.get("retention_days"))
    if kind == WATCH_TAG and (consent is None or retention is None):
        raise _Problem("invalid_watch_tag", "a watch_tag row needs consent (yes/no) and retention_days (personal data)")
    if kind != WATCH_TAG and consent is not None:
        raise _Problem("invalid_consent", f"consent is only for watch tags, and this row is a {kind}: leave it empty")
    return DeviceRow(
        row=row,
        id=device_id,
        organisation=organisation,
        kind=kind,
        profile=_checked("profile", check.text, values.get("profile"), "hardware profile", limit=64),
        gateway=gateway,
        hardware_serial=_checked("hardware_serial", check.text, values.get("hardware_serial"), "serial", limit=128),
        owner=_checked("owner", check.text, values.get("owner"), "owner"),
        location=location,
        labels=parse_labels(values.get("labels")),
        consent=consent,
        retention=retention,
    )


def parse_row(row: int, values: Mapping[str, str]) -> DeviceRow | RowError:
    """Validate one data row (column name → cell text); cells are stripped and empty ones mean "not given"."""
    cleaned = {column: (text.strip() or None) for column, text in values.items()}
    try:
        return _device_row(row, cleaned)
    except _Problem as problem:
        return RowError(row, cleaned.get("id"), problem.reason, problem.message)


# ------------------------------------------------------------------------------------------------------ file


def _text(data: bytes) -> str:
    if len(data) > MAX_BYTES:
        raise CsvRefused(
            f"the CSV is {len(data)} bytes; the limit is {MAX_BYTES} ({MAX_ROWS} rows): split it into several files",
            reason="csv_too_large",
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CsvRefused(
            f"the CSV is not UTF-8 (byte {exc.start} cannot be decoded): save it as 'CSV UTF-8' and send it again",
            reason="csv_encoding",
        ) from None


def _header(cells: Sequence[str]) -> list[str]:
    names = [cell.strip().lower() for cell in cells]
    unknown = [name for name in names if name not in COLUMNS]
    if unknown:
        raise CsvRefused(
            f"unknown column(s) {', '.join(map(repr, unknown))} in the header; columns are {', '.join(COLUMNS)}",
            reason="csv_header",
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise CsvRefused(f"column(s) {', '.join(repeated)} appear twice in the header", reason="csv_header")
    missing = [name for name in REQUIRED if name not in names]
    if missing:
        raise CsvRefused(
            f"the header lacks {', '.join(missing)}: the first line must name the columns "
            "(at least id,organisation,kind)",
            reason="csv_header",
        )
    return names


def _records(text: str) -> Iterator[tuple[int, list[str]]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        for cells in reader:
            if any(cell.strip() for cell in cells):
                yield reader.line_num, cells
    except csv.Error as exc:
        raise CsvRefused(f"the CSV is malformed at line {reader.line_num}: {exc}", reason="csv_malformed") from None


def parse_csv(data: bytes) -> list[DeviceRow | RowError]:
    """Every data row of a CSV file, valid or not; raises :class:`CsvRefused` when the file itself is unusable."""
    records = _records(_text(data))
    first = next(records, None)
    if first is None:
        raise CsvRefused("the CSV is empty: give a header line and one line per device", reason="csv_empty")
    names = _header(first[1])
    parsed: list[DeviceRow | RowError] = []
    for line, cells in records:
        if len(parsed) == MAX_ROWS:
            raise CsvRefused(
                f"the CSV has more than {MAX_ROWS} rows: split it into files of at most {MAX_ROWS}",
                reason="csv_too_many_rows",
            )
        if len(cells) > len(names):
            first_cell = cells[0].strip() or None
            message = f"the row has {len(cells)} cells but the header names {len(names)} columns (a stray comma?)"
            parsed.append(RowError(line, first_cell, "wrong_column_count", message))
            continue
        parsed.append(parse_row(line, dict(zip(names, cells, strict=False))))
    return parsed


# ---------------------------------------------------------------------------------------------------- report


class RowStatus(enum.StrEnum):
    CREATED = "created"
    VALID = "valid"
    """Dry run: the row would be created."""
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class RowResult:
    """What happened to one data row; ``reason`` and ``message`` say why it failed."""

    row: int
    id: str | None
    status: RowStatus
    reason: str | None = None
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "id": self.id,
            "status": self.status.value,
            "reason": self.reason,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class ImportReport:
    """The outcome of an import (or of a dry run), row by row in file order."""

    dry_run: bool
    rows: tuple[RowResult, ...]

    def count(self, status: RowStatus) -> int:
        return sum(1 for result in self.rows if result.status is status)

    @property
    def created(self) -> int:
        return self.count(RowStatus.CREATED)

    @property
    def valid(self) -> int:
        return self.count(RowStatus.VALID)

    @property
    def failed(self) -> int:
        return self.count(RowStatus.FAILED)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "total": len(self.rows),
            "created": self.created,
            "valid": self.valid,
            "failed": self.failed,
            "rows": [result.to_json() for result in self.rows],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ImportReport:
        """The report from the JSON the API answered (``POST /v1/devices/import``)."""
        rows = tuple(
            RowResult(
                row=int(item["row"]),
                id=item.get("id"),
                status=RowStatus(item["status"]),
                reason=item.get("reason"),
                message=item.get("message"),
            )
            for item in doc["rows"]
        )
        return cls(dry_run=bool(doc["dry_run"]), rows=rows)


def format_report(report: ImportReport) -> str:
    """The report as a text table (ROW, ID, STATUS, REASON, MESSAGE) and a summary line."""
    columns = ("row", "id", "status", "reason", "message")
    cells = [[name.upper() for name in columns]]
    for result in report.rows:
        doc = result.to_json()
        cells.append(["-" if doc[name] is None else str(doc[name]) for name in columns])
    widths = [max(len(line[index]) for line in cells) for index in range(len(columns))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in cells]
    if report.dry_run:
        summary = f"dry run: {report.valid} of {len(report.rows)} rows valid, {report.failed} failed; nothing created"
    else:
        summary = f"{report.created} of {len(report.rows)} rows created, {report.failed} failed"
    return "\n".join([*lines, summary])


# ---------------------------------------------------------------------------------------------------- import


async def _dry_check(registry: Registry, row: DeviceRow) -> None:
    """The registry questions a dry run can ask without writing: do the organisation and gateway exist, is the id
    free. (Hardware serial uniqueness is checked only by the real import.)"""
    try:
        await registry.get_organisation(row.organisation)
    except NotFound:
        raise _Problem("not_found", f"there is no organisation {row.organisation!r}: create it first") from None
    if row.gateway is not None:
        try:
            await registry.get_gateway(row.gateway)
        except NotFound:
            raise _Problem("not_found", f"there is no gateway {row.gateway!r}: register it first") from None
    for lookup in (registry.get_device, registry.get_gateway):
        try:
            await lookup(row.id)
        except NotFound:
            continue
        raise _Problem("already_exists", f"id {row.id} is already used by a gateway or device")


async def _create(registry: Registry, row: DeviceRow, actor: str) -> None:
    await registry.create_device(
        row.id,
        row.organisation,
        row.kind,
        actor=actor,
        profile=row.profile,
        hardware_serial=row.hardware_serial,
        owner=row.owner,
        location=row.location,
        labels=row.labels,
        gateway_id=row.gateway,
        consent=row.consent,
        retention=row.retention,
    )


async def _one(registry: Registry, row: DeviceRow, *, actor: str, dry_run: bool) -> RowResult:
    try:
        if dry_run:
            await _dry_check(registry, row)
        else:
            await _create(registry, row, actor)
    except _Problem as problem:
        return RowResult(row.row, row.id, RowStatus.FAILED, problem.reason, problem.message)
    except RegistryError as exc:
        return RowResult(row.row, row.id, RowStatus.FAILED, exc.reason, exc.message)
    return RowResult(row.row, row.id, RowStatus.VALID if dry_run else RowStatus.CREATED)


async def import_devices(
    registry: Registry, data: bytes | Sequence[DeviceRow | RowError], *, actor: str, dry_run: bool = False
) -> ImportReport:
    """Import a CSV file (bytes) or already parsed rows; one registry call per valid row, failures reported per row.

    A repeated id fails with ``duplicate_in_file`` (the first row with it is the one imported). A dry run checks
    every row as far as the registry can say without writing and creates nothing.
    """
    rows = parse_csv(data) if isinstance(data, bytes) else list(data)
    results: list[RowResult] = []
    seen: dict[str, int] = {}
    for row in rows:
        if isinstance(row, RowError):
            results.append(RowResult(row.row, row.id, RowStatus.FAILED, row.reason, row.message))
            continue
        if row.id in seen:
            message = f"id {row.id} already appears on line {seen[row.id]} of this file"
            results.append(RowResult(row.row, row.id, RowStatus.FAILED, "duplicate_in_file", message))
            continue
        seen[row.id] = row.row
        results.append(await _one(registry, row, actor=actor, dry_run=dry_run))
    report = ImportReport(dry_run=dry_run, rows=tuple(results))
    if not dry_run and report.created:
        await registry.append_audit(
            actor=actor,
            action="device.imported",
            entity_id=None,
            reason=f"CSV import: {report.created} devices created, {report.failed} rows failed",
            detail={"created": report.created, "failed": report.failed, "rows": len(report.rows)},
        )
    log.info(
        "devices_imported",
        actor=actor,
        dry_run=dry_run,
        rows=len(results),
        created=report.created,
        failed=report.failed,
    )
    return report
