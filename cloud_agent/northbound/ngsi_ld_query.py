"""The NGSI-LD query language (``q``, ETSI GS CIM 009 §4.9): a parser to a small tree and its evaluation on entities.

Supported: terms ``attr`` (exists) and ``!attr`` (does not exist); comparisons ``==`` ``!=`` ``>`` ``>=`` ``<``
``<=`` with numbers, ``"quoted strings"``, ``true``/``false``, date-times (``2026-04-01T09:00:00Z``), dates and URIs
(relationship objects); value lists (``stage==1,2,3``) and ranges (``level==0.5..2``) after ``==`` and ``!=``;
patterns ``=~`` and ``!~=`` (Python regular expressions, matched anywhere in a string, at most
:data:`MAX_PATTERN` characters); ``;`` (and) binds tighter than ``|`` (or); parentheses group. An attribute is
``name``, a sub-attribute path ``name.sub`` (a property of a property, or the members ``observedAt``, ``unitCode``,
``datasetId``) or a path into a JSON value ``name[key][key2]``.

Evaluation works on entities in normalized NGSI-LD form: a Property compares its ``value`` (the ``@value`` of a
typed value such as ``{"@type": "DateTime", "@value": ...}``), a Relationship its ``object``. A term holds when any
instance (several ``datasetId`` instances) or any element of an array value satisfies it; ``!=`` holds when the
attribute exists and no value equals the target. Values of different kinds never compare (``"3" > 2`` is false). A
malformed query raises :class:`QueryError`, whose message says what and where.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final, TypeAlias

__all__ = ["MAX_PATTERN", "MAX_QUERY", "Comparison", "Exists", "Logical", "Query", "QueryError", "parse", "values_of"]

MAX_QUERY: Final = 4096
"""Longest ``q`` accepted, in characters."""
MAX_PATTERN: Final = 256
"""Longest regular expression accepted after ``=~`` or ``!~=``."""

Scalar: TypeAlias = float | str | bool | datetime
"""A value in a query: a number, a string (also URIs), a boolean or an aware date-time."""

_OPERATORS: Final = ("!~=", "==", "!=", ">=", "<=", "=~", ">", "<")
_MEMBERS: Final = frozenset({"observedAt", "unitCode", "datasetId", "createdAt", "modifiedAt"})
_NAME_END: Final = frozenset("=!<>~;|()[] \t")
_VALUE_END: Final = frozenset(",;|)")
_NUMBER: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?")


class QueryError(ValueError):
    """A ``q`` that does not parse; the message names the position and what was expected."""


@dataclass(frozen=True, slots=True)
class Range:
    """``low..high``, both ends included."""

    low: Scalar
    high: Scalar


Target: TypeAlias = Scalar | tuple[Scalar, ...] | Range


@dataclass(frozen=True, slots=True)
class Path:
    """An attribute and where inside it: ``name.sub`` steps (sub-attributes) then ``[key]`` steps (JSON value)."""

    name: str
    sub: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()

    def __str__(self) -> str:
        return ".".join((self.name, *self.sub)) + "".join(f"[{key}]" for key in self.keys)


@dataclass(frozen=True, slots=True)
class Exists:
    """``attr`` (``present``) or ``!attr``."""

    path: Path
    present: bool = True


@dataclass(frozen=True, slots=True)
class Comparison:
    """``attr <op> target``; for ``=~``/``!~=`` the target is the compiled pattern."""

    path: Path
    op: str
    target: Target | re.Pattern[str]


@dataclass(frozen=True, slots=True)
class Logical:
    """``;`` (``op == "and"``) or ``|`` (``op == "or"``) over two or more parts."""

    op: str
    parts: tuple[Query, ...]


Query: TypeAlias = Exists | Comparison | Logical
Resolver: TypeAlias = Callable[[str], str]
"""Turns an attribute name as written (a short name or an IRI) into the name the entities use."""


def _same(name: str) -> str:
    return name


class _Parser:
    """Recursive descent over the query text; ``pos`` is the next character."""

    def __init__(self, text: str, resolve: Resolver) -> None:
        self.text = text
        self.pos = 0
        self.resolve = resolve

    def fail(self, what: str) -> QueryError:
        shown = self.text[self.pos : self.pos + 20] or "the end"
        return QueryError(f"q is not valid at character {self.pos + 1} ({shown!r}): {what}")

    def peek(self, token: str) -> bool:
        return self.text.startswith(token, self.pos)

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def parse(self) -> Query:
        if not self.text.strip():
            raise QueryError("q is empty: give a query such as level>2.5;stage==3")
        query = self.disjunction()
        if not self.at_end():
            raise self.fail("expected ';' (and), '|' (or) or the end of the query")
        return query

    def disjunction(self) -> Query:
        parts = [self.conjunction()]
        while self.peek("|"):
            self.pos += 1
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else Logical("or", tuple(parts))

    def conjunction(self) -> Query:
        parts = [self.primary()]
        while self.peek(";"):
            self.pos += 1
            parts.append(self.primary())
        return parts[0] if len(parts) == 1 else Logical("and", tuple(parts))

    def primary(self) -> Query:
        if self.peek("("):
            self.pos += 1
            inner = self.disjunction()
            if not self.peek(")"):
                raise self.fail("expected ')' closing the group")
            self.pos += 1
            return inner
        if self.peek("!") and not self.peek("!=") and not self.peek("!~="):
            self.pos += 1
            return Exists(self.path(), present=False)
        path = self.path()
        op = next((candidate for candidate in _OPERATORS if self.peek(candidate)), None)
        if op is None:
            return Exists(path)
        self.pos += len(op)
        if op in ("=~", "!~="):
            return Comparison(path, op, self.pattern())
        target = self.target()
        if isinstance(target, (tuple, Range)) and op not in ("==", "!="):
            raise self.fail(f"a value list or range goes only with == or !=, not {op}")
        if op not in ("==", "!=") and isinstance(target, bool):
            raise self.fail(f"true and false compare only with == or !=, not {op}")
        return Comparison(path, op, target)

    def path(self) -> Path:
        start = self.pos
        while not self.at_end() and self.text[self.pos] not in _NAME_END:
            self.pos += 1
        raw = self.text[start : self.pos]
        if not raw:
            raise self.fail("expected an attribute name")
        if "://" in raw or raw.startswith("urn:"):
            name, sub = raw, tuple[str, ...]()
        else:
            name, *rest = raw.split(".")
            if not name or any(not step for step in rest):
                raise self.fail(f"attribute path {raw!r} has an empty step")
            sub = tuple(self.resolve(step) if step not in _MEMBERS else step for step in rest)
        keys: list[str] = []
        while self.peek("["):
            close = self.text.find("]", self.pos)
            if close < 0:
                raise self.fail("expected ']' closing the key")
            key = self.text[self.pos + 1 : close]
            if not key:
                raise self.fail("empty key between '[' and ']'")
            keys.extend(key.split("."))
            self.pos = close + 1
        return Path(self.resolve(name), sub, tuple(keys))

    def pattern(self) -> re.Pattern[str]:
        if self.peek('"'):
            source = self.quoted()
        else:
            start, depth = self.pos, 0
            while not self.at_end():
                char = self.text[self.pos]
                if char == "\\":
                    self.pos += 2
                    continue
                if char == "(":
                    depth += 1
                elif char == ")":
                    if depth == 0:
                        break
                    depth -= 1
                elif char == ";" or (char == "|" and depth == 0):
                    break
                self.pos += 1
            source = self.text[start : self.pos]
        if not source:
            raise self.fail("expected a regular expression")
        if len(source) > MAX_PATTERN:
            raise self.fail(f"the regular expression is longer than {MAX_PATTERN} characters")
        try:
            return re.compile(source)
        except re.error as exc:
            raise self.fail(f"the regular expression {source!r} does not compile ({exc})") from None

    def target(self) -> Target:
        first = self.scalar()
        if self.peek(".."):
            self.pos += 2
            high = self.scalar()
            if type(first) is not type(high) or isinstance(first, bool):
                raise self.fail("both ends of a range must be numbers, strings or date-times of the same kind")
            return Range(first, high)
        if not self.peek(","):
            return first
        items = [first]
        while self.peek(","):
            self.pos += 1
            items.append(self.scalar())
        return tuple(items)

    def quoted(self) -> str:
        self.pos += 1
        out: list[str] = []
        while not self.at_end():
            char = self.text[self.pos]
            if char == "\\" and self.pos + 1 < len(self.text):
                out.append(self.text[self.pos + 1])
                self.pos += 2
                continue
            if char == '"':
                self.pos += 1
                return "".join(out)
            out.append(char)
            self.pos += 1
        raise self.fail("a quoted string is not closed with '\"'")

    def scalar(self) -> Scalar:
        if self.peek('"'):
            return self.quoted()
        start = self.pos
        while not self.at_end() and self.text[self.pos] not in _VALUE_END and not self.peek(".."):
            self.pos += 1
        raw = self.text[start : self.pos]
        if not raw:
            raise self.fail("expected a value")
        self.pos = start
        value = _bare_value(raw)
        if value is None:
            raise self.fail(f"{raw!r} is not a number, true, false, date-time or URI: put strings in double quotes")
        self.pos += len(raw)
        return value


def _bare_value(raw: str) -> Scalar | None:
    if raw in ("true", "false"):
        return raw == "true"
    if _NUMBER.fullmatch(raw):
        number = float(raw)
        return number if math.isfinite(number) else None
    when = as_datetime(raw)
    if when is not None:
        return when
    if ":" in raw and " " not in raw:
        return raw
    return None


def as_datetime(text: str) -> datetime | None:
    """``text`` as an aware date-time (a date is its midnight UTC; no zone means UTC), or None."""
    try:
        if _DATETIME.fullmatch(text):
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        elif _DATE.fullmatch(text):
            day = date.fromisoformat(text)
            parsed = datetime(day.year, day.month, day.day)
        else:
            return None
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def parse(text: str, resolve: Resolver = _same) -> Query:
    """The query tree of ``text``; ``resolve`` maps each attribute name as written to the entities' name."""
    if len(text) > MAX_QUERY:
        raise QueryError(f"q is {len(text)} characters long: at most {MAX_QUERY} are accepted")
    return _Parser(text, resolve).parse()


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


def _instances(found: object) -> list[Mapping[str, object]]:
    items = found if isinstance(found, list) else [found]
    return [item for item in items if isinstance(item, Mapping)]


def _value_of(attribute: Mapping[str, object]) -> object:
    kind = attribute.get("type")
    if kind == "Relationship":
        return attribute.get("object")
    if kind == "LanguageProperty":
        return attribute.get("languageMap")
    value = attribute.get("value")
    if isinstance(value, Mapping) and "@value" in value:
        return value["@value"]
    return value


def values_of(entity: Mapping[str, object], path: Path) -> list[object]:
    """Every value ``path`` reaches in the normalized ``entity`` (empty: the attribute is not there)."""
    current: list[Mapping[str, object]] = _instances(entity.get(path.name))
    for step in path.sub:
        deeper: list[Mapping[str, object]] = []
        members: list[object] = []
        for attribute in current:
            found = attribute.get(step)
            if step in _MEMBERS and isinstance(found, str):
                members.append(found)
            else:
                deeper.extend(_instances(found))
        if members:
            return members
        current = deeper
    values: list[object] = [_value_of(attribute) for attribute in current]
    for key in path.keys:
        values = [value[key] for value in values if isinstance(value, Mapping) and key in value]
    return [value for value in values if value is not None]


def _flatten(values: list[object]) -> Iterator[object]:
    for value in values:
        if isinstance(value, list):
            yield from value
        else:
            yield value


def _comparable(value: object, target: Scalar) -> tuple[Any, Any] | None:
    """The pair to compare, or None when ``value`` and ``target`` are of different kinds."""
    if isinstance(target, bool):
        return (value, target) if isinstance(value, bool) else None
    if isinstance(target, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), target
        return None
    if isinstance(target, datetime):
        when = as_datetime(value) if isinstance(value, str) else None
        return (when, target) if when is not None else None
    return (value, target) if isinstance(value, str) else None


_ORDER: Final[Mapping[str, Callable[[Any, Any], Any]]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


def _equal(value: object, target: Scalar | tuple[Scalar, ...] | Range) -> bool:
    if isinstance(target, tuple):
        return any(_equal(value, item) for item in target)
    if isinstance(target, Range):
        return _compare(value, ">=", target.low) and _compare(value, "<=", target.high)
    pair = _comparable(value, target)
    return pair is not None and pair[0] == pair[1]


def _compare(value: object, op: str, target: Scalar) -> bool:
    pair = _comparable(value, target)
    if pair is None or isinstance(target, bool):
        return False
    left, right = pair
    return bool(_ORDER[op](left, right))


def _holds(comparison: Comparison, values: list[object]) -> bool:
    flat = list(_flatten(values))
    target = comparison.target
    if isinstance(target, re.Pattern):
        strings = [value for value in flat if isinstance(value, str)]
        if comparison.op == "=~":
            return any(target.search(value) for value in strings)
        return bool(strings) and not any(target.search(value) for value in strings)
    if comparison.op == "==":
        return any(_equal(value, target) for value in flat)
    if comparison.op == "!=":
        return bool(flat) and not any(_equal(value, target) for value in flat)
    assert not isinstance(target, (tuple, Range))
    return any(_compare(value, comparison.op, target) for value in flat)


def matches(query: Query, entity: Mapping[str, object]) -> bool:
    """Whether the normalized ``entity`` satisfies ``query``."""
    if isinstance(query, Logical):
        if query.op == "and":
            return all(matches(part, entity) for part in query.parts)
        return any(matches(part, entity) for part in query.parts)
    values = values_of(entity, query.path)
    if isinstance(query, Exists):
        return bool(values) == query.present
    return _holds(query, values)


def attribute_names(query: Query) -> set[str]:
    """The attribute names ``query`` refers to (top level only)."""
    if isinstance(query, Logical):
        return set().union(*(attribute_names(part) for part in query.parts))
    return {query.path.name}
