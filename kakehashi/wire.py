"""The wire contract between gateway and cloud agent: MQTT topics, payload codecs, sequence numbers, limits.

Both sides import this one module, so a message that one side encodes is, by construction, a message the
other side decodes. It is deliberately small and pure: no I/O, no clocks, no MQTT client. Encoders turn the
typed messages below into compact UTF-8 JSON (orjson); decoders turn arbitrary bytes back into those messages
and raise nothing but :class:`WireError`, whose ``reason`` is a short code a receiver counts and logs before
dropping the message (see ``docs/protocol.md``, "Malformed input").

Topic tree (MQTT 5, QoS 1), rooted at ``kh/v1``::

    kh/v1/<gateway>/up/readings     SenML pack of readings               gateway -> agent, sequenced
    kh/v1/<gateway>/up/events       gap reports and other events         gateway -> agent, sequenced
    kh/v1/<gateway>/up/reported     twin reported state                  gateway -> agent, sequenced
    kh/v1/<gateway>/up/acks         command lifecycle acknowledgements   gateway -> agent, sequenced
    kh/v1/<gateway>/down/desired    twin desired-state delta             agent -> gateway
    kh/v1/<gateway>/down/commands   one command                          agent -> gateway
    kh/v1/<gateway>/down/crl        certificate revocation list (DER)    agent -> gateway
    kh/v1/<gateway>/status          online/offline, retained, last will  gateway -> agent

Readings are decoded on the agent's hot path, so :func:`decode_readings` is a plain loop over dicts (no
pydantic); the low-volume documents share small field validators between their encoders and decoders.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache, partial
from typing import Final, TypeAlias, TypeVar, cast

import orjson

from kakehashi.errors import KakehashiError
from kakehashi.identity import ID_PATTERN, IdentityError, validate_id

__all__ = [
    "CONTENT_TYPES",
    "MAX_ACKS",
    "MAX_DOC_BYTES",
    "MAX_EPOCH",
    "MAX_EVENTS",
    "MAX_PAYLOAD_BYTES",
    "MAX_RECORDS",
    "MAX_SEQ",
    "MAX_STRING",
    "MIN_EPOCH",
    "QOS",
    "TOPIC_ROOT",
    "WIRE_REASONS",
    "WIRE_VERSION",
    "AckStatus",
    "AcksMessage",
    "Channel",
    "ClockQuality",
    "CommandAck",
    "CommandMessage",
    "DesiredMessage",
    "DownlinkMessage",
    "Event",
    "EventsMessage",
    "GapReport",
    "JSONObject",
    "JSONValue",
    "Precondition",
    "Reading",
    "ReadingsMessage",
    "ReportedMessage",
    "StatusMessage",
    "StatusReason",
    "StatusState",
    "UplinkMessage",
    "WireError",
    "decode_acks",
    "decode_command",
    "decode_crl",
    "decode_desired",
    "decode_downlink",
    "decode_events",
    "decode_readings",
    "decode_reported",
    "decode_status",
    "decode_uplink",
    "encode_acks",
    "encode_command",
    "encode_crl",
    "encode_desired",
    "encode_events",
    "encode_readings",
    "encode_reported",
    "encode_status",
    "gateway_subscriptions",
    "parse_topic",
    "topic_for",
    "uplink_subscriptions",
]

# ----------------------------------------------------------------------------------------------------
# Limits. Every payload is checked against MAX_PAYLOAD_BYTES before it is parsed.

WIRE_VERSION: Final = 1
"""The payload format version: the ``"v"`` field of every JSON payload and the ``v1`` in the topic root."""
TOPIC_ROOT: Final = "kh/v1"
"""The first two levels of every topic."""
QOS: Final = 1
"""Every publication and subscription uses MQTT QoS 1 (at least once); deduplication is by sequence number."""
MAX_PAYLOAD_BYTES: Final = 262_144
"""Largest payload of any message, in bytes (256 KiB)."""
MAX_RECORDS: Final = 10_000
"""Most SenML records in one readings message."""
MAX_DOC_BYTES: Final = 65_536
"""Largest JSON document (twin state, delta, command params, event attrs, ack result), compactly encoded."""
MAX_STRING: Final = 1024
"""Longest string value (``vs``), base64url data value (``vd``) or free-text reason, in characters."""
MAX_EVENTS: Final = 1000
"""Most events in one events message."""
MAX_ACKS: Final = 1000
"""Most acknowledgements in one acks message."""
MAX_SEQ: Final = 2**63 - 1
"""Largest sequence number (and twin version); sequence numbers start at 1."""
MIN_EPOCH: Final = 2**28
"""Smallest absolute time (1978-07-04); SenML reads anything smaller as relative to "now": refused here."""
MAX_EPOCH: Final = 2**33
"""Times must be smaller than this (2242-03-16); larger values are bugs, not timestamps."""
MAX_UNIT: Final = 64
"""Longest unit symbol."""

_MIN_EPOCH_MS: Final = MIN_EPOCH * 1000
_MAX_EPOCH_MS: Final = MAX_EPOCH * 1000

WIRE_REASONS: Final = frozenset(
    {
        "oversize",
        "malformed_json",
        "malformed_der",
        "not_object",
        "unknown_version",
        "missing_field",
        "bad_field",
        "too_many_records",
        "relative_time",
        "bad_name",
        "bad_value",
        "must_understand",
        "bad_topic",
    }
)
"""Every ``WireError.reason``, so that receivers can pre-register one counter per reason."""

JSONValue: TypeAlias = "bool | int | float | str | list[JSONValue] | dict[str, JSONValue] | None"
JSONObject: TypeAlias = "dict[str, JSONValue]"


class WireError(KakehashiError):
    """A message or topic does not follow the wire contract.

    ``reason`` is one of :data:`WIRE_REASONS` (for counting); the message names the field or record index
    and says what is wrong with it.
    """

    reason = "bad_field"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, reason=reason)

    def __reduce__(self) -> tuple[Callable[[str], WireError], tuple[str]]:
        # Keep the reason when the error crosses a process boundary (reason is keyword-only).
        return partial(type(self), reason=self.reason), (self.message,)


# ----------------------------------------------------------------------------------------------------
# Topics


class Channel(StrEnum):
    """The topic levels below ``kh/v1/<gateway>/``; each carries exactly one payload type."""

    READINGS = "up/readings"
    EVENTS = "up/events"
    REPORTED = "up/reported"
    ACKS = "up/acks"
    DESIRED = "down/desired"
    COMMANDS = "down/commands"
    CRL = "down/crl"
    STATUS = "status"

    @property
    def is_uplink(self) -> bool:
        """Gateway-to-agent channels whose payloads carry the gateway's sequence number."""
        return self.value.startswith("up/")

    @property
    def is_downlink(self) -> bool:
        """Agent-to-gateway channels."""
        return self.value.startswith("down/")


CONTENT_TYPES: Final[Mapping[Channel, str]] = {
    Channel.READINGS: "application/vnd.kakehashi.readings+json; v=1",
    Channel.EVENTS: "application/vnd.kakehashi.events+json; v=1",
    Channel.REPORTED: "application/vnd.kakehashi.reported+json; v=1",
    Channel.ACKS: "application/vnd.kakehashi.acks+json; v=1",
    Channel.DESIRED: "application/vnd.kakehashi.desired+json; v=1",
    Channel.COMMANDS: "application/vnd.kakehashi.command+json; v=1",
    Channel.CRL: "application/pkix-crl",
    Channel.STATUS: "application/vnd.kakehashi.status+json; v=1",
}
"""The MQTT 5 content-type property of each channel's publications."""

_CHANNELS: Final = {channel.value: channel for channel in Channel}
_VERSION_LEVEL = re.compile(r"v[1-9][0-9]{0,8}")


def _topic_id(value: str, what: str) -> str:
    try:
        return validate_id(value)
    except IdentityError as exc:
        raise WireError(f"{what}: {exc.message}", reason="bad_topic") from None


def topic_for(gateway_id: str, channel: Channel) -> str:
    """The topic of ``channel`` messages for ``gateway_id``: ``kh/v1/<gateway>/<channel>``."""
    _topic_id(gateway_id, "gateway id in topic")
    if not isinstance(channel, Channel):
        raise WireError(f"unknown channel {channel!r}: use a kakehashi.wire.Channel", reason="bad_topic")
    return f"{TOPIC_ROOT}/{gateway_id}/{channel.value}"


def _parse_topic(topic: str) -> tuple[str, Channel]:
    levels = topic.split("/", 3)
    if len(levels) >= 2 and levels[0] == "kh" and levels[1] != "v1" and _VERSION_LEVEL.fullmatch(levels[1]):
        raise WireError(
            f"topic {topic!r} uses wire version {levels[1]}; this receiver understands only {TOPIC_ROOT}",
            reason="unknown_version",
        )
    if len(levels) != 4 or levels[0] != "kh" or levels[1] != "v1":
        raise WireError(f"topic {topic!r} is not {TOPIC_ROOT}/<gateway>/<channel>", reason="bad_topic")
    channel = _CHANNELS.get(levels[3])
    if channel is None:
        known = ", ".join(_CHANNELS)
        raise WireError(f"topic {topic!r} names no known channel (expected one of {known})", reason="bad_topic")
    return _topic_id(levels[2], f"topic {topic!r}"), channel


_parse_topic_cached = lru_cache(maxsize=4096)(_parse_topic)
_MAX_TOPIC: Final = 128


def parse_topic(topic: str) -> tuple[str, Channel]:
    """Split ``kh/v1/<gateway>/<channel>`` into the gateway id and the :class:`Channel`.

    Raises :class:`WireError` with reason ``unknown_version`` for another ``kh/v<N>`` root and ``bad_topic``
    for anything else that is not exactly a known topic (wrong root, invalid id, unknown channel, extra
    levels).
    """
    if not isinstance(topic, str):
        raise WireError(f"topic must be a string, not {type(topic).__name__}", reason="bad_topic")
    if len(topic) > _MAX_TOPIC:  # no valid topic is this long; keep such strings out of the cache
        return _parse_topic(topic)
    return _parse_topic_cached(topic)


def uplink_subscriptions(share_group: str | None = None) -> list[str]:
    """The topic filters a cloud agent subscribes to: every gateway's uplinks and statuses.

    With ``share_group`` the filters are MQTT 5 shared subscriptions (``$share/<group>/...``), so that the
    agents of one group split the traffic between them.
    """
    filters = [f"{TOPIC_ROOT}/+/up/#", f"{TOPIC_ROOT}/+/{Channel.STATUS.value}"]
    if share_group is None:
        return filters
    _topic_id(share_group, "shared subscription group")
    return [f"$share/{share_group}/{topic_filter}" for topic_filter in filters]


def gateway_subscriptions(gateway_id: str) -> list[str]:
    """The topic filters a gateway subscribes to: its own downlink subtree."""
    _topic_id(gateway_id, "gateway id in topic")
    return [f"{TOPIC_ROOT}/{gateway_id}/down/#"]


# ----------------------------------------------------------------------------------------------------
# Message types


class ClockQuality(StrEnum):
    """How far an observed time can be trusted."""

    SYNCED = "synced"
    """The clock that stamped the reading is disciplined by NTP or GNSS."""
    UNSYNCED = "unsynced"
    """The device's own clock, not known to be synchronised."""
    ESTIMATED = "estimated"
    """The device sent no time; the gateway assigned its reception time."""


class AckStatus(StrEnum):
    """A command's state as reported by the gateway."""

    DELIVERED = "delivered"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    REJECTED = "rejected"


class StatusState(StrEnum):
    """Whether the gateway is connected to the broker."""

    ONLINE = "online"
    OFFLINE = "offline"


class StatusReason(StrEnum):
    """Why a status was published; ``will`` is the broker publishing the gateway's last will."""

    CONNECTED = "connected"
    HEARTBEAT = "heartbeat"
    SHUTDOWN = "shutdown"
    WILL = "will"


_STATE_OF_REASON: Final = {
    StatusReason.CONNECTED: StatusState.ONLINE,
    StatusReason.HEARTBEAT: StatusState.ONLINE,
    StatusReason.SHUTDOWN: StatusState.OFFLINE,
    StatusReason.WILL: StatusState.OFFLINE,
}


@dataclass(frozen=True, slots=True)
class Reading:
    """One observation of one quantity of one device.

    ``observed_at`` is absolute epoch seconds; the wire keeps it to the millisecond.
    """

    device_id: str
    quantity: str
    value: float | str | bool | bytes
    unit: str | None
    observed_at: float
    clock: ClockQuality


@dataclass(frozen=True, slots=True)
class ReadingsMessage:
    """A batch of readings; ``seq`` is the gateway's uplink sequence, ``sent_at`` when it was formed."""

    seq: int
    sent_at: float
    readings: tuple[Reading, ...]


@dataclass(frozen=True, slots=True)
class GapReport:
    """The gateway dropped the uplink messages ``from_seq..to_seq`` (inclusive), losing ``count`` readings."""

    from_seq: int
    to_seq: int
    count: int
    reason: str


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened at ``at`` (an alarm, a source error, ...), optionally about one device."""

    kind: str
    at: float
    device_id: str | None = None
    attrs: JSONObject = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EventsMessage:
    """A batch of events and gap reports."""

    seq: int
    sent_at: float
    events: tuple[GapReport | Event, ...]


@dataclass(frozen=True, slots=True)
class ReportedMessage:
    """The gateway's twin reported state, whole, at ``version``."""

    seq: int
    sent_at: float
    version: int
    state: JSONObject


@dataclass(frozen=True, slots=True)
class CommandAck:
    """A step in the lifecycle of command ``command_id``, as seen by the gateway at ``at``."""

    command_id: str
    status: AckStatus
    at: float
    reason: str | None = None
    result: JSONObject | None = None


@dataclass(frozen=True, slots=True)
class AcksMessage:
    """A batch of command acknowledgements."""

    seq: int
    sent_at: float
    acks: tuple[CommandAck, ...]


@dataclass(frozen=True, slots=True)
class StatusMessage:
    """The gateway's connection status; published retained, and registered as its last will."""

    state: StatusState
    reason: StatusReason
    sent_at: float
    health: JSONObject | None = None


@dataclass(frozen=True, slots=True)
class DesiredMessage:
    """A change to the twin's desired state: ``delta`` merged into the desired document makes ``version``."""

    version: int
    sent_at: float
    delta: JSONObject


@dataclass(frozen=True, slots=True)
class Precondition:
    """A command runs only if the gateway's reported state is at ``reported_version``."""

    reported_version: int


@dataclass(frozen=True, slots=True)
class CommandMessage:
    """A command for one device behind the gateway, executed at most once per ``idempotency_key``."""

    command_id: str
    device_id: str
    name: str
    params: JSONObject
    deadline: float
    idempotency_key: str
    sent_at: float
    precondition: Precondition | None = None


UplinkMessage: TypeAlias = ReadingsMessage | EventsMessage | ReportedMessage | AcksMessage
DownlinkMessage: TypeAlias = DesiredMessage | CommandMessage | bytes

# ----------------------------------------------------------------------------------------------------
# Shared field validators. ``where`` names the field in error messages, e.g. "events message: events[2].at".

_MISSING: Final = object()
_QUANTITY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9./_-]{0,63}")
_CODE_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_COMMAND_NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")
_COMMAND_ID_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")
_BASE64URL_PATTERN = re.compile(r"[A-Za-z0-9_-]*")

_E = TypeVar("_E", bound=StrEnum)


def _kind(value: object) -> str:
    """A short description of a JSON value for error messages (never the whole value: it may be huge)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value.bit_length() > 64:
        return "an integer beyond 64 bits"
    if isinstance(value, int | float):
        return f"the number {value!r}" if len(repr(value)) <= 24 else "a number"
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) <= 40 else f"a string of {len(value)} characters"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _bad(where: str, problem: str, value: object = _MISSING, reason: str = "bad_field") -> WireError:
    got = "" if value is _MISSING else f", got {_kind(value)}"
    return WireError(f"{where} {problem}{got}", reason=reason)


def _field(doc: Mapping[str, object], key: str, where: str) -> object:
    value = doc.get(key, _MISSING)
    if value is _MISSING:
        raise WireError(f"{where}{key} is missing", reason="missing_field")
    return value


def _int(value: object, where: str, low: int, high: int = MAX_SEQ) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _bad(where, f"must be an integer from {low} to {high}", value)
    return int(value)


def _epoch(value: object, where: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _bad(where, "must be a number of epoch seconds", value)
    if isinstance(value, float) and not math.isfinite(value):
        raise _bad(where, "must be a finite number of epoch seconds", value)
    if value < MIN_EPOCH:
        raise _bad(where, "must be an absolute epoch time (>= 2**28 s), not a relative one", value, "relative_time")
    if value >= MAX_EPOCH:
        raise _bad(where, "must be an epoch time before 2**33 s (year 2242)", value)
    return float(value)


def _text(value: object, where: str, pattern: re.Pattern[str] | None, max_len: int, rule: str) -> str:
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= max_len
        or (pattern is not None and not pattern.fullmatch(value))
    ):
        raise _bad(where, f"must be {rule}", value)
    return str(value)


def _optional_text(value: object, where: str) -> str | None:
    return None if value is None else _text(value, where, None, MAX_STRING, f"null or 1-{MAX_STRING} characters")


def _device(value: object, where: str) -> str:
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise _bad(where, "must be a device id (1-63 of a-z, 0-9, '-', not starting or ending with '-')", value)
    return str(value)


def _code(value: object, where: str) -> str:
    return _text(value, where, _CODE_PATTERN, 64, "a lowercase code like 'source_error' ([a-z][a-z0-9_-]{0,63})")


def _member(enum: type[_E], value: object, where: str) -> _E:
    if isinstance(value, str):
        try:
            return enum(value)
        except ValueError:
            pass
    choices = ", ".join(member.value for member in enum)
    raise _bad(where, f"must be one of {choices}", value)


def _document(value: object, where: str) -> JSONObject:
    if not isinstance(value, dict):
        raise _bad(where, "must be a JSON object", value)
    try:
        # Encoded three levels down, as deep as any document sits in a message, so that a document accepted
        # here also encodes inside its envelope (orjson encodes at most 254 levels).
        size = len(orjson.dumps([[[value]]])) - 6
    except orjson.JSONEncodeError as exc:
        raise _bad(where, f"is not a representable JSON document ({exc})") from None
    if size > MAX_DOC_BYTES:
        raise _bad(where, f"is {size} bytes encoded; the limit is {MAX_DOC_BYTES}", reason="oversize")
    return cast(JSONObject, value)


def _optional_document(value: object, where: str) -> JSONObject | None:
    return None if value is None else _document(value, where)


def _check_extensions(obj: Mapping[str, object], known: frozenset[str], where: str) -> None:
    """Unknown fields are ignored, except those ending in ``_``, which must be understood (RFC 8428 §4.4)."""
    for key in obj:
        if key not in known and key.endswith("_"):
            raise WireError(
                f"{where}field {key!r} must be understood, and this receiver does not know it",
                reason="must_understand",
            )


def _array(doc: Mapping[str, object], key: str, where: str, limit: int, reason: str) -> list[object]:
    value = _field(doc, key, where)
    if not isinstance(value, list):
        raise _bad(f"{where}{key}", "must be an array", value)
    if len(value) > limit:
        raise WireError(f"{where}{key} has {len(value)} entries; the limit is {limit}", reason=reason)
    return value


def _load(payload: bytes, kind: str, known: frozenset[str], limit: int = MAX_PAYLOAD_BYTES) -> dict[str, object]:
    """Parse a JSON payload and check the parts common to every message: size, object, version, extensions."""
    size = len(payload)
    if size > limit:
        raise WireError(f"{kind} message is {size} bytes; the limit is {limit}", reason="oversize")
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"{kind} message is not valid UTF-8 JSON: {exc}", reason="malformed_json") from None
    if not isinstance(doc, dict):
        raise WireError(f"{kind} message must be a JSON object, got {_kind(doc)}", reason="not_object")
    version = doc.get("v", _MISSING)
    if version is _MISSING:
        raise WireError(f"{kind} message: v (the wire version) is missing", reason="missing_field")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _bad(f"{kind} message: v", "must be the integer wire version", version)
    if version != WIRE_VERSION:
        raise WireError(
            f"{kind} message has wire version {version}; this receiver understands only {WIRE_VERSION}",
            reason="unknown_version",
        )
    if not known.issuperset(doc):
        _check_extensions(doc, known, f"{kind} message: ")
    return doc


def _dump(doc: dict[str, object], kind: str) -> bytes:
    try:
        payload = orjson.dumps(doc)
    except orjson.JSONEncodeError as exc:
        raise WireError(f"{kind} message cannot be encoded as JSON: {exc}", reason="bad_value") from None
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise WireError(
            f"{kind} message would be {len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES} (send smaller batches)",
            reason="oversize",
        )
    return payload


def _head(kind: str, seq: int, sent_at: float) -> dict[str, object]:
    return {
        "v": WIRE_VERSION,
        "seq": _int(seq, f"{kind} message: seq", 1),
        "ts": _epoch(sent_at, f"{kind} message: ts"),
    }


def _read_head(doc: Mapping[str, object], kind: str) -> tuple[int, float]:
    where = f"{kind} message: "
    return (
        _int(_field(doc, "seq", where), f"{where}seq", 1),
        _epoch(_field(doc, "ts", where), f"{where}ts"),
    )


# ----------------------------------------------------------------------------------------------------
# Readings: a SenML pack (RFC 8428) inside the sequenced envelope. This is the hot path.

_READINGS_FIELDS: Final = frozenset({"v", "seq", "ts", "cq", "senml"})
_RECORD_FIELDS: Final = frozenset(
    {"bn", "bt", "bu", "bv", "bver", "bs", "n", "u", "v", "vs", "vb", "vd", "s", "t", "ut", "cq"}
)
_CLOCKS: Final = {clock.value: clock for clock in ClockQuality}
_MAX_NAME: Final = 128  # device id (<= 63) + ":" + quantity (<= 64)


@lru_cache(maxsize=8192)
def _split_name(name: str) -> tuple[str, str] | None:
    """Split a resolved SenML name ``<device>:<quantity>``; ``None`` if either part is invalid."""
    device, colon, quantity = name.partition(":")
    if not colon or not ID_PATTERN.fullmatch(device) or not _QUANTITY_PATTERN.fullmatch(quantity):
        return None
    return device, quantity


def _name_error(where: str, name: str) -> WireError:
    shown = repr(name) if len(name) <= _MAX_NAME else f"of {len(name)} characters"
    return WireError(
        f"{where} name {shown} is not <device id>:<quantity> "
        "(device id: 1-63 of a-z, 0-9, '-'; quantity: [A-Za-z0-9][A-Za-z0-9./_-]{0,63})",
        reason="bad_name",
    )


def _record_error(index: int, key: str, problem: str, value: object = _MISSING, reason: str = "bad_field") -> WireError:
    return _bad(f"readings message: senml[{index}].{key}", problem, value, reason)


def _unit(value: object, index: int, key: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_UNIT:
        raise _record_error(index, key, f"must be a unit symbol of 1-{MAX_UNIT} characters", value)
    return value


def _time_error(index: int, when: float) -> WireError:
    if when < MIN_EPOCH:
        return _record_error(
            index,
            "t",
            "resolves (bt + t) to a relative time; times must be absolute epoch seconds >= 2**28",
            when,
            "relative_time",
        )
    if when >= MAX_EPOCH:
        return _record_error(index, "t", "resolves (bt + t) to a time at or after 2**33 s (year 2242)", when)
    return _record_error(index, "t", "resolves (bt + t) to a time that is not a finite number", when)


def _to_ms(at: object, index: int) -> int:
    """An observed time as integer epoch milliseconds, checked like the decoder checks ``bt + t``."""
    if not isinstance(at, int | float) or isinstance(at, bool):
        raise _record_error(index, "t", "observed_at must be a number of epoch seconds", at)
    if not MIN_EPOCH - 1 < at < MAX_EPOCH + 1:
        raise _time_error(index, at)
    ms = round(at * 1000)
    if not _MIN_EPOCH_MS <= ms < _MAX_EPOCH_MS:
        raise _time_error(index, ms / 1000)
    return ms


def _string_value(value: object, index: int) -> str:
    if type(value) is not str or len(value) > MAX_STRING:
        raise _record_error(index, "vs", f"must be a string of at most {MAX_STRING} characters", value, "bad_value")
    return value


def _data_value(value: object, index: int) -> bytes:
    if type(value) is not str or len(value) > MAX_STRING or not _BASE64URL_PATTERN.fullmatch(value):
        raise _record_error(
            index,
            "vd",
            f"must be base64url without padding, at most {MAX_STRING} characters",
            value,
            "bad_value",
        )
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise _record_error(index, "vd", "is not valid base64url", value, "bad_value") from None


def _record_value(rec: dict[str, object], index: int) -> float | str | bool | bytes:
    """The value of a record that has no ``v``: exactly one of ``vs``, ``vb``, ``vd``."""
    present = [key for key in ("vs", "vb", "vd") if key in rec]
    if len(present) != 1:
        problem = "has no value field" if not present else f"has several value fields ({', '.join(present)})"
        raise WireError(
            f"readings message: senml[{index}] {problem}; give exactly one of v, vs, vb, vd",
            reason="bad_value",
        )
    key = present[0]
    value = rec[key]
    if key == "vs":
        return _string_value(value, index)
    if key == "vb":
        if type(value) is not bool:
            raise _record_error(index, "vb", "must be true or false", value, "bad_value")
        return value
    return _data_value(value, index)


def _check_record_extensions(rec: dict[str, object], index: int) -> None:
    _check_extensions(rec, _RECORD_FIELDS, f"readings message: senml[{index}]: ")


def decode_readings(payload: bytes) -> ReadingsMessage:
    """Decode a readings message; raises :class:`WireError` for anything that is not a valid one."""
    doc = _load(payload, "readings", _READINGS_FIELDS)
    seq, sent_at = _read_head(doc, "readings")
    default_clock = _member(ClockQuality, _field(doc, "cq", "readings message: "), "readings message: cq")
    pack = _array(doc, "senml", "readings message: ", MAX_RECORDS, "too_many_records")

    readings: list[Reading] = []
    append = readings.append
    split = _split_name
    clocks = _CLOCKS
    known = _RECORD_FIELDS
    base_name = ""
    base_time: float = 0
    base_unit: str | None = None
    base_value: float = 0
    for index, rec in enumerate(pack):
        if type(rec) is not dict:
            raise _bad(f"readings message: senml[{index}]", "must be a JSON object", rec)
        if not known.issuperset(rec):
            _check_record_extensions(rec, index)
        if "bn" in rec:
            base_name = rec["bn"]
            if type(base_name) is not str:
                raise _record_error(index, "bn", "must be a string", base_name, "bad_name")
        if "bt" in rec:
            base_time = rec["bt"]
            if type(base_time) is not float and type(base_time) is not int:
                raise _record_error(index, "bt", "must be a number", base_time)
        if "bu" in rec:
            base_unit = _unit(rec["bu"], index, "bu")
        if "bv" in rec:
            base_value = rec["bv"]
            if type(base_value) is not float and type(base_value) is not int:
                raise _record_error(index, "bv", "must be a number", base_value, "bad_value")

        name = rec.get("n", "")
        if type(name) is not str:
            raise _record_error(index, "n", "must be a string", name, "bad_name")
        parts = split(base_name + name) if len(base_name) + len(name) <= _MAX_NAME else None
        if parts is None:
            raise _name_error(f"readings message: senml[{index}]", base_name + name)

        offset = rec.get("t", 0)
        if type(offset) is not float and type(offset) is not int:
            raise _record_error(index, "t", "must be a number", offset)
        when = base_time + offset
        if not MIN_EPOCH - 1 < when < MAX_EPOCH + 1:  # also keeps round() away from inf
            raise _time_error(index, when)
        ms = round(when * 1000)
        if not _MIN_EPOCH_MS <= ms < _MAX_EPOCH_MS:
            raise _time_error(index, ms / 1000)

        value: float | str | bool | bytes
        if "v" in rec:
            number = rec["v"]
            if type(number) is float:
                value = number
            elif type(number) is int:
                value = float(number)
            else:
                raise _record_error(index, "v", "must be a number (use vb for booleans)", number, "bad_value")
            if "vs" in rec or "vb" in rec or "vd" in rec:
                raise WireError(
                    f"readings message: senml[{index}] has several value fields; give exactly one of v, vs, vb, vd",
                    reason="bad_value",
                )
            if base_value:
                value += base_value
                if not math.isfinite(value):
                    raise _record_error(index, "v", "plus bv is not a finite number", reason="bad_value")
        else:
            value = _record_value(rec, index)

        unit = rec.get("u", base_unit)
        if unit is not base_unit:
            unit = _unit(unit, index, "u")

        clock = rec.get("cq", default_clock)
        if clock is not default_clock:
            clock = clocks.get(clock) if type(clock) is str else None
            if clock is None:
                raise _record_error(index, "cq", f"must be one of {', '.join(clocks)}", rec["cq"])

        append(Reading(parts[0], parts[1], value, unit, ms / 1000, clock))
    return ReadingsMessage(seq, sent_at, tuple(readings))


def _encode_value(value: object, index: int, rec: dict[str, object]) -> None:
    if isinstance(value, bool):
        rec["vb"] = value
    elif isinstance(value, float | int):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise _record_error(index, "v", "must be a finite number", value, "bad_value")
        rec["v"] = number
    elif isinstance(value, str):
        if len(value) > MAX_STRING:
            raise _record_error(index, "vs", f"must be at most {MAX_STRING} characters", value, "bad_value")
        rec["vs"] = str(value)
    elif isinstance(value, bytes | bytearray):
        data = base64.urlsafe_b64encode(value).rstrip(b"=").decode("ascii")
        if len(data) > MAX_STRING:
            raise _record_error(
                index,
                "vd",
                f"encodes to {len(data)} base64url characters; the limit is {MAX_STRING}",
                reason="bad_value",
            )
        rec["vd"] = data
    else:
        raise _record_error(index, "v", "must be a float, str, bool or bytes", value, "bad_value")


def encode_readings(msg: ReadingsMessage) -> bytes:
    """Encode readings as a SenML pack: ``bn`` when the device changes, ``bt`` once, times to the ms."""
    readings = msg.readings
    if len(readings) > MAX_RECORDS:
        raise WireError(
            f"readings message has {len(readings)} readings; the limit is {MAX_RECORDS}",
            reason="too_many_records",
        )
    doc = _head("readings", msg.seq, msg.sent_at)
    # The most common clock quality becomes the message default, so that only the exceptions carry "cq".
    counts = Counter(reading.clock for reading in readings)
    default_clock = ClockQuality.SYNCED
    if counts:
        default_clock = _member(ClockQuality, counts.most_common(1)[0][0], "readings message: cq")
    doc["cq"] = default_clock.value
    records: list[dict[str, object]] = []
    previous_device: str | None = None
    base_ms = 0
    for index, reading in enumerate(readings):
        rec: dict[str, object] = {}
        device, quantity = reading.device_id, reading.quantity
        if _split_name(f"{device}:{quantity}") != (device, quantity):
            raise _name_error(f"readings message: readings[{index}]", f"{device}:{quantity}")
        if device != previous_device:
            rec["bn"] = f"{device}:"
            previous_device = device
        ms = _to_ms(reading.observed_at, index)
        if index == 0:
            rec["bt"] = ms / 1000
            base_ms = ms
        rec["n"] = quantity
        if reading.unit is not None:
            rec["u"] = _unit(reading.unit, index, "u")
        _encode_value(reading.value, index, rec)
        if ms != base_ms:
            rec["t"] = (ms - base_ms) / 1000
        clock = reading.clock
        if clock != default_clock:
            rec["cq"] = _member(ClockQuality, clock, f"readings message: readings[{index}].clock").value
        records.append(rec)
    doc["senml"] = records
    return _dump(doc, "readings")


# ----------------------------------------------------------------------------------------------------
# Events: gap reports and other events, in the sequenced envelope.

_EVENTS_FIELDS: Final = frozenset({"v", "seq", "ts", "events"})
_GAP_FIELDS: Final = frozenset({"kind", "from_seq", "to_seq", "count", "reason"})
_EVENT_FIELDS: Final = frozenset({"kind", "at", "device", "attrs"})
GAP_KIND: Final = "gap"


def _gap_json(gap: GapReport, seq: int, where: str) -> dict[str, object]:
    from_seq = _int(gap.from_seq, f"{where}.from_seq", 1)
    to_seq = _int(gap.to_seq, f"{where}.to_seq", from_seq, seq - 1)
    return {
        "kind": GAP_KIND,
        "from_seq": from_seq,
        "to_seq": to_seq,
        "count": _int(gap.count, f"{where}.count", 0),
        "reason": _code(gap.reason, f"{where}.reason"),
    }


def _event_json(event: Event, where: str) -> dict[str, object]:
    kind = _code(event.kind, f"{where}.kind")
    if kind == GAP_KIND:
        raise _bad(f"{where}.kind", "is reserved for GapReport", kind)
    return {
        "kind": kind,
        "at": _epoch(event.at, f"{where}.at"),
        "device": None if event.device_id is None else _device(event.device_id, f"{where}.device"),
        "attrs": _document(event.attrs, f"{where}.attrs"),
    }


def encode_events(msg: EventsMessage) -> bytes:
    """Encode an events message (gap reports and events, in order)."""
    if len(msg.events) > MAX_EVENTS:
        raise WireError(
            f"events message has {len(msg.events)} events; the limit is {MAX_EVENTS}",
            reason="too_many_records",
        )
    doc = _head("events", msg.seq, msg.sent_at)
    items: list[dict[str, object]] = []
    for index, item in enumerate(msg.events):
        where = f"events message: events[{index}]"
        if isinstance(item, GapReport):
            items.append(_gap_json(item, msg.seq, where))
        elif isinstance(item, Event):
            items.append(_event_json(item, where))
        else:
            raise _bad(where, "must be a GapReport or an Event", item)
    doc["events"] = items
    return _dump(doc, "events")


def _read_event(item: object, seq: int, where: str) -> GapReport | Event:
    if not isinstance(item, dict):
        raise _bad(where, "must be a JSON object", item)
    prefix = f"{where}."
    kind = _code(_field(item, "kind", prefix), f"{prefix}kind")
    if kind == GAP_KIND:
        if not _GAP_FIELDS.issuperset(item):
            _check_extensions(item, _GAP_FIELDS, f"{where}: ")
        from_seq = _int(_field(item, "from_seq", prefix), f"{prefix}from_seq", 1)
        return GapReport(
            from_seq=from_seq,
            to_seq=_int(_field(item, "to_seq", prefix), f"{prefix}to_seq", from_seq, seq - 1),
            count=_int(_field(item, "count", prefix), f"{prefix}count", 0),
            reason=_code(_field(item, "reason", prefix), f"{prefix}reason"),
        )
    if not _EVENT_FIELDS.issuperset(item):
        _check_extensions(item, _EVENT_FIELDS, f"{where}: ")
    device = item.get("device")
    return Event(
        kind=kind,
        at=_epoch(_field(item, "at", prefix), f"{prefix}at"),
        device_id=None if device is None else _device(device, f"{prefix}device"),
        attrs=_document(item.get("attrs", {}), f"{prefix}attrs"),
    )


def decode_events(payload: bytes) -> EventsMessage:
    """Decode an events message; raises :class:`WireError` for anything that is not a valid one."""
    doc = _load(payload, "events", _EVENTS_FIELDS)
    seq, sent_at = _read_head(doc, "events")
    items = _array(doc, "events", "events message: ", MAX_EVENTS, "too_many_records")
    events = tuple(_read_event(item, seq, f"events message: events[{index}]") for index, item in enumerate(items))
    return EventsMessage(seq, sent_at, events)


# ----------------------------------------------------------------------------------------------------
# Reported state, in the sequenced envelope.

_REPORTED_FIELDS: Final = frozenset({"v", "seq", "ts", "version", "state"})


def encode_reported(msg: ReportedMessage) -> bytes:
    """Encode the gateway's whole reported twin state at ``msg.version``."""
    doc = _head("reported", msg.seq, msg.sent_at)
    doc["version"] = _int(msg.version, "reported message: version", 0)
    doc["state"] = _document(msg.state, "reported message: state")
    return _dump(doc, "reported")


def decode_reported(payload: bytes) -> ReportedMessage:
    """Decode a reported-state message; raises :class:`WireError` for anything that is not a valid one."""
    doc = _load(payload, "reported", _REPORTED_FIELDS)
    seq, sent_at = _read_head(doc, "reported")
    where = "reported message: "
    return ReportedMessage(
        seq=seq,
        sent_at=sent_at,
        version=_int(_field(doc, "version", where), f"{where}version", 0),
        state=_document(_field(doc, "state", where), f"{where}state"),
    )


# ----------------------------------------------------------------------------------------------------
# Command acknowledgements, in the sequenced envelope.

_ACKS_FIELDS: Final = frozenset({"v", "seq", "ts", "acks"})
_ACK_FIELDS: Final = frozenset({"command", "status", "at", "reason", "result"})
_COMMAND_ID_RULE: Final = "a command id (1-64 of a-z, 0-9, '-', not starting or ending with '-')"


def encode_acks(msg: AcksMessage) -> bytes:
    """Encode a batch of command acknowledgements."""
    if len(msg.acks) > MAX_ACKS:
        raise WireError(f"acks message has {len(msg.acks)} acks; the limit is {MAX_ACKS}", reason="too_many_records")
    doc = _head("acks", msg.seq, msg.sent_at)
    items: list[dict[str, object]] = []
    for index, ack in enumerate(msg.acks):
        where = f"acks message: acks[{index}]."
        items.append(
            {
                "command": _text(ack.command_id, f"{where}command", _COMMAND_ID_PATTERN, 64, _COMMAND_ID_RULE),
                "status": _member(AckStatus, ack.status, f"{where}status").value,
                "at": _epoch(ack.at, f"{where}at"),
                "reason": _optional_text(ack.reason, f"{where}reason"),
                "result": _optional_document(ack.result, f"{where}result"),
            }
        )
    doc["acks"] = items
    return _dump(doc, "acks")


def _read_ack(item: object, index: int) -> CommandAck:
    where = f"acks message: acks[{index}]"
    if not isinstance(item, dict):
        raise _bad(where, "must be a JSON object", item)
    if not _ACK_FIELDS.issuperset(item):
        _check_extensions(item, _ACK_FIELDS, f"{where}: ")
    prefix = f"{where}."
    return CommandAck(
        command_id=_text(
            _field(item, "command", prefix), f"{prefix}command", _COMMAND_ID_PATTERN, 64, _COMMAND_ID_RULE
        ),
        status=_member(AckStatus, _field(item, "status", prefix), f"{prefix}status"),
        at=_epoch(_field(item, "at", prefix), f"{prefix}at"),
        reason=_optional_text(item.get("reason"), f"{prefix}reason"),
        result=_optional_document(item.get("result"), f"{prefix}result"),
    )


def decode_acks(payload: bytes) -> AcksMessage:
    """Decode an acks message; raises :class:`WireError` for anything that is not a valid one."""
    doc = _load(payload, "acks", _ACKS_FIELDS)
    seq, sent_at = _read_head(doc, "acks")
    items = _array(doc, "acks", "acks message: ", MAX_ACKS, "too_many_records")
    return AcksMessage(seq, sent_at, tuple(_read_ack(item, index) for index, item in enumerate(items)))


_UPLINK_DECODERS: Final[Mapping[Channel, Callable[[bytes], UplinkMessage]]] = {
    Channel.READINGS: decode_readings,
    Channel.EVENTS: decode_events,
    Channel.REPORTED: decode_reported,
    Channel.ACKS: decode_acks,
}


def decode_uplink(channel: Channel, payload: bytes) -> UplinkMessage:
    """Decode the payload of a sequenced uplink ``channel`` (the channel comes from :func:`parse_topic`)."""
    decoder = _UPLINK_DECODERS.get(channel) if isinstance(channel, Channel) else None
    if decoder is None:
        raise WireError(f"channel {channel!r} is not a sequenced uplink channel", reason="bad_topic")
    return decoder(payload)


# ----------------------------------------------------------------------------------------------------
# Status: not sequenced; retained, and registered as the gateway's last will (state offline, reason will).

_STATUS_FIELDS: Final = frozenset({"v", "state", "ts", "reason", "health"})


def _status_pair(state: object, reason: object) -> tuple[StatusState, StatusReason]:
    state_ = _member(StatusState, state, "status message: state")
    reason_ = _member(StatusReason, reason, "status message: reason")
    if _STATE_OF_REASON[reason_] is not state_:
        raise _bad(
            "status message: state",
            f"must be {_STATE_OF_REASON[reason_].value} when reason is {reason_.value}",
            state,
        )
    return state_, reason_


def encode_status(msg: StatusMessage) -> bytes:
    """Encode a status: ``connected``/``heartbeat`` go with ``online``, ``shutdown``/``will`` with
    ``offline``."""
    state, reason = _status_pair(msg.state, msg.reason)
    doc: dict[str, object] = {
        "v": WIRE_VERSION,
        "state": state.value,
        "ts": _epoch(msg.sent_at, "status message: ts"),
        "reason": reason.value,
        "health": _optional_document(msg.health, "status message: health"),
    }
    return _dump(doc, "status")


def decode_status(payload: bytes) -> StatusMessage:
    """Decode a status message; raises :class:`WireError` for anything that is not a valid one."""
    doc = _load(payload, "status", _STATUS_FIELDS)
    where = "status message: "
    state, reason = _status_pair(_field(doc, "state", where), _field(doc, "reason", where))
    return StatusMessage(
        state=state,
        reason=reason,
        sent_at=_epoch(_field(doc, "ts", where), f"{where}ts"),
        health=_optional_document(doc.get("health"), f"{where}health"),
    )


# ----------------------------------------------------------------------------------------------------
# Downlinks: desired-state deltas, commands and CRLs (not sequenced; versions and ids make them idempotent).

_DESIRED_FIELDS: Final = frozenset({"v", "version", "ts", "delta"})
_COMMAND_FIELDS: Final = frozenset(
    {"v", "id", "device", "name", "params", "deadline", "idempotency_key", "precondition", "ts"}
)
_PRECONDITION_FIELDS: Final = frozenset({"reported_version"})


def encode_desired(msg: DesiredMessage) -> bytes:
    """Encode a desired-state delta at ``msg.version`` (>= 1)."""
    doc: dict[str, object] = {
        "v": WIRE_VERSION,
        "version": _int(msg.version, "desired message: version", 1),
        "ts": _epoch(msg.sent_at, "desired message: ts"),
        "delta": _document(msg.delta, "desired message: delta"),
    }
    return _dump(doc, "desired")


def decode_desired(payload: bytes) -> DesiredMessage:
    """Decode a desired-state message; raises :class:`WireError` for anything that is not a valid one."""
    doc = _load(payload, "desired", _DESIRED_FIELDS)
    where = "desired message: "
    return DesiredMessage(
        version=_int(_field(doc, "version", where), f"{where}version", 1),
        sent_at=_epoch(_field(doc, "ts", where), f"{where}ts"),
        delta=_document(_field(doc, "delta", where), f"{where}delta"),
    )


def _command_fields(
    command_id: object, device: object, name: object, key: object, where: str
) -> tuple[str, str, str, str]:
    return (
        _text(command_id, f"{where}id", _COMMAND_ID_PATTERN, 64, _COMMAND_ID_RULE),
        _device(device, f"{where}device"),
        _text(name, f"{where}name", _COMMAND_NAME_PATTERN, 64, "a command name ([a-z][a-z0-9_]{0,63})"),
        _text(key, f"{where}idempotency_key", None, 128, "a string of 1-128 characters"),
    )


def encode_command(msg: CommandMessage) -> bytes:
    """Encode a command for one device behind the gateway."""
    where = "command message: "
    command_id, device, name, key = _command_fields(msg.command_id, msg.device_id, msg.name, msg.idempotency_key, where)
    precondition: dict[str, object] | None = None
    if msg.precondition is not None:
        if not isinstance(msg.precondition, Precondition):
            raise _bad(f"{where}precondition", "must be a Precondition or None", msg.precondition)
        version = _int(msg.precondition.reported_version, f"{where}precondition.reported_version", 0)
        precondition = {"reported_version": version}
    doc: dict[str, object] = {
        "v": WIRE_VERSION,
        "id": command_id,
        "device": device,
        "name": name,
        "params": _document(msg.params, f"{where}params"),
        "deadline": _epoch(msg.deadline, f"{where}deadline"),
        "idempotency_key": key,
        "precondition": precondition,
        "ts": _epoch(msg.sent_at, f"{where}ts"),
    }
    return _dump(doc, "command")


def decode_command(payload: bytes) -> CommandMessage:
    """Decode a command message; raises :class:`WireError` for anything that is not a valid one."""
    doc = _load(payload, "command", _COMMAND_FIELDS)
    where = "command message: "
    command_id, device, name, key = _command_fields(
        _field(doc, "id", where),
        _field(doc, "device", where),
        _field(doc, "name", where),
        _field(doc, "idempotency_key", where),
        where,
    )
    raw = doc.get("precondition")
    precondition: Precondition | None = None
    if raw is not None:
        if not isinstance(raw, dict):
            raise _bad(f"{where}precondition", "must be an object or null", raw)
        if not _PRECONDITION_FIELDS.issuperset(raw):
            _check_extensions(raw, _PRECONDITION_FIELDS, f"{where}precondition: ")
        prefix = f"{where}precondition."
        precondition = Precondition(_int(_field(raw, "reported_version", prefix), f"{prefix}reported_version", 0))
    return CommandMessage(
        command_id=command_id,
        device_id=device,
        name=name,
        params=_document(doc.get("params", {}), f"{where}params"),
        deadline=_epoch(_field(doc, "deadline", where), f"{where}deadline"),
        idempotency_key=key,
        sent_at=_epoch(_field(doc, "ts", where), f"{where}ts"),
        precondition=precondition,
    )


def _check_der(der: bytes, what: str) -> bytes:
    """Check size and that ``der`` is one DER SEQUENCE whose length header matches the payload length."""
    size = len(der)
    if size > MAX_PAYLOAD_BYTES:
        raise WireError(f"{what} is {size} bytes; the limit is {MAX_PAYLOAD_BYTES}", reason="oversize")
    data = bytes(der)
    if size < 2 or data[0] != 0x30:
        raise WireError(f"{what} is not DER: it must start with a SEQUENCE (0x30)", reason="malformed_der")
    first = data[1]
    if first < 0x80:
        header, length = 2, first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or size < 2 + count:
            raise WireError(f"{what} is not DER: bad length header", reason="malformed_der")
        header, length = 2 + count, int.from_bytes(data[2 : 2 + count], "big")
    if header + length != size:
        raise WireError(
            f"{what} is not DER: the SEQUENCE says {header + length} bytes but the payload has {size}",
            reason="malformed_der",
        )
    return data


def encode_crl(der: bytes) -> bytes:
    """The payload of a CRL publication: the DER bytes, after the same checks as :func:`decode_crl`."""
    return _check_der(der, "CRL")


def decode_crl(payload: bytes) -> bytes:
    """Return the DER CRL in ``payload`` after checking size and framing; parsing is the receiver's job."""
    return _check_der(payload, "CRL")


_DOWNLINK_DECODERS: Final[Mapping[Channel, Callable[[bytes], DownlinkMessage]]] = {
    Channel.DESIRED: decode_desired,
    Channel.COMMANDS: decode_command,
    Channel.CRL: decode_crl,
}


def decode_downlink(channel: Channel, payload: bytes) -> DownlinkMessage:
    """Decode the payload of a downlink ``channel`` (desired delta, command, or CRL bytes)."""
    decoder = _DOWNLINK_DECODERS.get(channel) if isinstance(channel, Channel) else None
    if decoder is None:
        raise WireError(f"channel {channel!r} is not a downlink channel", reason="bad_topic")
    return decoder(payload)


# ----------------------------------------------------------------------------------------------------
# Edge nodes ↔ their gateway, on the gateway's local broker (``kn/v1/<node>/...``)
#
# A node publishes readings envelopes (the same codec as gateway readings, with the node's own sequence number)
# on ``up/readings`` or, for threshold crossings, ``up/alarms``. The gateway commits them to its outbox and only then
# answers on ``down/ack`` with the node's sequence number, so a node keeps a reading in its ring buffer until the
# gateway holds it durably. A node's sequence number must increase across reboots (boot counter in the high bits);
# the gateway ignores, but acknowledges again, anything at or below the highest it has committed.

NODE_TOPIC_ROOT: Final = "kn/v1"


class NodeChannel(StrEnum):
    """The topic levels below ``kn/v1/<node>/``."""

    READINGS = "up/readings"
    ALARMS = "up/alarms"
    ACKS = "up/acks"
    RELAY_ACK = "down/ack"
    CONFIG = "down/config"
    COMMANDS = "down/commands"

    @property
    def is_uplink(self) -> bool:
        return self.value.startswith("up/")


_NODE_CHANNELS: Final = {channel.value: channel for channel in NodeChannel}


def node_topic_for(node_id: str, channel: NodeChannel) -> str:
    """``kn/v1/<node>/<channel>``."""
    _topic_id(node_id, "node id in topic")
    return f"{NODE_TOPIC_ROOT}/{node_id}/{channel.value}"


def parse_node_topic(topic: str) -> tuple[str, NodeChannel]:
    """Split ``kn/v1/<node>/<channel>``; :class:`WireError` (``bad_topic`` / ``unknown_version``) otherwise."""
    if not isinstance(topic, str) or len(topic) > _MAX_TOPIC:
        raise WireError(f"node topic {topic!r} is not {NODE_TOPIC_ROOT}/<node>/<channel>", reason="bad_topic")
    levels = topic.split("/", 3)
    if len(levels) >= 2 and levels[0] == "kn" and levels[1] != "v1" and _VERSION_LEVEL.fullmatch(levels[1]):
        raise WireError(f"node topic {topic!r} uses wire version {levels[1]}", reason="unknown_version")
    if len(levels) != 4 or levels[0] != "kn" or levels[1] != "v1":
        raise WireError(f"node topic {topic!r} is not {NODE_TOPIC_ROOT}/<node>/<channel>", reason="bad_topic")
    channel = _NODE_CHANNELS.get(levels[3])
    if channel is None:
        raise WireError(f"node topic {topic!r} names no known node channel", reason="bad_topic")
    return _topic_id(levels[2], f"node topic {topic!r}"), channel


def node_relay_subscriptions() -> list[str]:
    """What a gateway subscribes to on its local broker: every node's uplinks."""
    return [f"{NODE_TOPIC_ROOT}/+/up/#"]


_RELAY_ACK_FIELDS: Final = frozenset({"v", "seq"})


def encode_relay_ack(seq: int) -> bytes:
    """The gateway's answer to a node: its message ``seq`` is durably committed (or was already)."""
    return _dump({"v": WIRE_VERSION, "seq": _int(seq, "relay ack: seq", 1)}, "relay ack")


def decode_relay_ack(payload: bytes) -> int:
    doc = _load(payload, "relay ack", _RELAY_ACK_FIELDS, MAX_DOC_BYTES)
    return _int(_field(doc, "seq", "relay ack: "), "relay ack: seq", 1)
