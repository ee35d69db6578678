"""One line of the gateway self-test: what was checked, the outcome, what was seen, and the next step if it failed."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = ["Check", "Status"]


class Status(enum.StrEnum):
    """``fail`` makes the self-test exit 1; ``warn`` and ``unknown`` are shown but do not."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of one check; ``fix`` is the next step, set whenever the status is not ``pass``."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    @classmethod
    def ok(cls, name: str, detail: str) -> Check:
        return cls(name, Status.PASS, detail)

    @classmethod
    def failed(cls, name: str, detail: str, fix: str) -> Check:
        return cls(name, Status.FAIL, detail, fix)

    @classmethod
    def warning(cls, name: str, detail: str, fix: str) -> Check:
        return cls(name, Status.WARN, detail, fix)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status.value, "detail": self.detail, "fix": self.fix or None}
