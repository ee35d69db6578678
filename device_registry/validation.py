"""Checks of the values callers pass in: ids, kinds, labels, locations, retention periods, serials, documents.

Each returns the (normalised) value or raises :class:`InvalidInput` with one sentence saying how to fix it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Final

import orjson

from device_registry.errors import InvalidInput
from device_registry.models import Location
from kakehashi.identity import IdentityError, validate_id
from kakehashi.wire import MAX_DOC_BYTES, JSONObject

_KIND: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
_LABEL_KEY: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_SERIAL: Final = re.compile(r"[0-9a-fA-F]{1,40}")
_CODE: Final = re.compile(r"[a-z][a-z0-9_-]{0,63}")
MAX_TEXT: Final = 200
MAX_LABELS: Final = 64


def entity_id(value: str) -> str:
    try:
        return validate_id(value)
    except IdentityError as exc:
        raise InvalidInput(exc.message) from None


def kind(value: str) -> str:
    if not isinstance(value, str) or not _KIND.fullmatch(value):
        raise InvalidInput(f"device kind {value!r} must be a lowercase code like water_level or watch_tag")
    return value


def code(value: str, what: str) -> str:
    if not isinstance(value, str) or not _CODE.fullmatch(value):
        raise InvalidInput(f"{what} {value!r} must be a lowercase code like disk_budget ([a-z][a-z0-9_-]{{0,63}})")
    return value


def text(value: str | None, what: str, *, limit: int = MAX_TEXT) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise InvalidInput(f"{what} must be 1-{limit} characters, got {value!r}")
    return value


def labels(value: Mapping[str, str] | None) -> dict[str, str]:
    if value is None:
        return {}
    if len(value) > MAX_LABELS:
        raise InvalidInput(f"at most {MAX_LABELS} labels per entity, got {len(value)}")
    for key, item in value.items():
        if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
            raise InvalidInput(f"label key {key!r} must be 1-63 of a-z, 0-9, '_', '.', '-' (like zone or river.basin)")
        text(item, f"label {key}")
    return dict(value)


def location(value: Location | None) -> Location:
    if value is None:
        return Location()
    for coordinate, bound, what in ((value.latitude, 90.0, "latitude"), (value.longitude, 180.0, "longitude")):
        if coordinate is not None and not (math.isfinite(coordinate) and -bound <= coordinate <= bound):
            raise InvalidInput(f"{what} {coordinate!r} must be a number from -{bound:g} to {bound:g} (WGS 84 degrees)")
    if (value.latitude is None) != (value.longitude is None):
        raise InvalidInput("give both latitude and longitude, or neither")
    text(value.place, "place")
    return value


def retention(value: timedelta | None) -> int | None:
    """A retention period in whole seconds (at least one)."""
    if value is None:
        return None
    seconds = int(value.total_seconds())
    if seconds < 1:
        raise InvalidInput(f"retention {value} must be at least one second")
    return seconds


def serial(value: str) -> str:
    """A certificate serial as lowercase hex without leading zeros (the form of ``CertRecord.serial_hex``)."""
    if not isinstance(value, str) or not _SERIAL.fullmatch(value) or int(value, 16) == 0:
        raise InvalidInput(f"certificate serial {value!r} must be 1-40 hex digits, not all zero")
    return format(int(value, 16), "x")


def document(value: JSONObject, what: str) -> JSONObject:
    """A JSON object that fits in a wire document."""
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    try:
        size = len(orjson.dumps(value))
    except orjson.JSONEncodeError as exc:
        raise InvalidInput(f"{what} is not a JSON document: {exc}") from None
    if size > MAX_DOC_BYTES:
        raise InvalidInput(f"{what} is {size} bytes encoded; the limit is {MAX_DOC_BYTES}")
    return value


def aware(value: datetime, what: str) -> datetime:
    """An aware datetime, in UTC (a naive one would be read as local time somewhere: refused)."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidInput(f"{what} must be an aware datetime (with a time zone, e.g. UTC), got {value!r}")
    return value.astimezone(UTC)


def sequence_number(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 2**63 - 1:
        raise InvalidInput(f"{what} must be an integer from 1 to 2**63-1, got {value!r}")
    return value
