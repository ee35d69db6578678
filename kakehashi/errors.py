"""Error types shared by every part: one clear sentence saying what is wrong and how to fix it."""

from __future__ import annotations


class KakehashiError(Exception):
    """An expected failure caused by input or environment, reported to the user as one line.

    ``reason`` is a short machine-readable code used for counting and logging; the message is the human sentence.
    """

    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.reason


class ConfigError(KakehashiError):
    """A configuration value is missing or invalid."""

    reason = "config"


class MissingDependencyError(KakehashiError):
    """A program or package the command needs is not installed."""

    reason = "missing_dependency"
