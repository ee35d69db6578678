"""Validation of settings changed at run time through the twin: numbers in a range, with a reason when refused."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Applier = Callable[[Any], str]


def in_range(value: Any, low: float, high: float, what: str) -> float:
    """``value`` as a float if it is a number within [low, high]; otherwise ValueError saying what is allowed."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{what} must be a number between {low:g} and {high:g}")
    return float(value)


def apply_settings(settings: Mapping[str, Any], appliers: Mapping[str, Applier]) -> dict[str, str]:
    """Apply each setting with its applier; results are "applied" or "rejected: <why>"."""
    results: dict[str, str] = {}
    for key, value in settings.items():
        applier = appliers.get(key)
        if applier is None:
            known = ", ".join(sorted(appliers)) or "none"
            results[key] = f"rejected: not a live setting of this source (live settings: {known})"
            continue
        try:
            results[key] = applier(value)
        except (TypeError, ValueError) as exc:
            results[key] = f"rejected: {exc}"
    return results
