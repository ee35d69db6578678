"""The settings a MicroPython node (``edge/khnode``) takes from its gateway, checked before they are sent.

These are the node's *remote* keys (``edge/khnode/config.py``, ``REMOTE`` and ``LEVEL_RANGE``; docs/edge.md,
"Settings"), with the same types and ranges: a test compares the two tables and runs the same deltas through both
checks, so the gateway refuses exactly what the node would refuse, with a reason, instead of sending it.

A node's desired settings are kept flat: ``{"levels": {"caution": 2.7}}`` becomes ``{"levels.caution": 2.7}``. The
thresholds must ascend; the gateway checks that over the thresholds it has set so far (the others are in the node's
``node.json``, which the gateway does not know), and the node checks the whole set again when it applies them.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["LEVEL_NAMES", "LEVEL_RANGE", "RULES", "SettingsCheck", "check_settings"]

RULES: Final[dict[str, tuple[type, float | None, float | None]]] = {
    "sample_s": (int, 10, 86400),
    "active_s": (int, 10, 600),
    "flood_s": (int, 10, 600),
    "heartbeat_s": (int, 600, 86400),
    "poll_s": (int, 60, 604800),
    "hysteresis_m": (float, 0.0, 2.0),
    "spike_m": (float, 0.01, 100.0),
    "stuck_n": (int, 0, 1000),
    "samples": (int, 1, 31),
    "flood": (bool, None, None),
}
"""``key: (type, lowest, highest)``, as the firmware's ``config.REMOTE``."""

LEVEL_NAMES: Final = ("observe", "standby", "caution", "evacuate", "danger")
"""The five thresholds, lowest first (``levels.<name>``, metres)."""

LEVEL_RANGE: Final = (-1000.0, 10000.0)


@dataclass
class SettingsCheck:
    """The outcome of checking one desired delta: what may be sent, and why anything else may not."""

    accepted: dict[str, Any] = field(default_factory=dict)
    """Flat keys (``active_s``, ``levels.caution``) with their normalised values."""
    rejected: dict[str, str] = field(default_factory=dict)
    """Key as given → reason."""


def _value(key: str, value: Any, rule: tuple[type, float | None, float | None]) -> Any:
    kind, low, high = rule
    if value is None:
        raise ValueError(f"{key} cannot be removed from a node: set a value instead")
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key} must be true or false")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number")
    if kind is int and not isinstance(value, int):
        raise ValueError(f"{key} must be a whole number")
    assert low is not None  # only booleans have no range
    assert high is not None
    if not low <= value <= high:
        raise ValueError(f"{key} must be from {low} to {high}")
    return int(value) if kind is int else float(value)


def _flatten(delta: Mapping[str, Any], rejected: dict[str, str]) -> dict[str, Any]:
    """``levels`` objects become ``levels.<name>`` keys; anything else is kept as given."""
    flat: dict[str, Any] = {}
    for key, value in delta.items():
        if key == "levels":
            if not isinstance(value, dict):
                rejected[key] = "levels must be an object of thresholds (observe, standby, caution, evacuate, danger)"
                continue
            flat.update({f"levels.{name}": level for name, level in value.items()})
        else:
            flat[key] = value
    return flat


def _ascending(levels: Mapping[str, float]) -> str | None:
    """Why the thresholds known do not ascend, or None."""
    known = [(name, levels[name]) for name in LEVEL_NAMES if name in levels]
    for (lower, low), (name, value) in itertools.pairwise(known):
        if value <= low:
            return f"levels must ascend: {name} ({value}) is not above {lower} ({low})"
    return None


def check_settings(delta: Mapping[str, Any], current: Mapping[str, Any]) -> SettingsCheck:
    """Check ``delta`` for a node whose desired settings are ``current`` (flat); each key on its own.

    Thresholds are checked together: if the set they make with ``current`` does not ascend, every threshold of the
    delta is refused with that reason (the node would refuse the whole change)."""
    result = SettingsCheck()
    levels: dict[str, float] = {
        key[len("levels.") :]: value for key, value in current.items() if key.startswith("levels.")
    }
    touched: list[str] = []
    for key, value in _flatten(delta, result.rejected).items():
        try:
            if key.startswith("levels."):
                name = key[len("levels.") :]
                if name not in LEVEL_NAMES:
                    raise ValueError(f"{key} is not a threshold (known: {', '.join(LEVEL_NAMES)})")
                levels[name] = _value(key, value, (float, *LEVEL_RANGE))
                result.accepted[key] = levels[name]
                touched.append(key)
            elif key in RULES:
                result.accepted[key] = _value(key, value, RULES[key])
            else:
                raise ValueError(f"{key} is not a node setting (known: {', '.join([*RULES, 'levels.<name>'])})")
        except ValueError as exc:
            result.rejected[key] = str(exc)
    problem = _ascending(levels)
    if problem is not None:
        for key in touched:
            del result.accepted[key]
            result.rejected[key] = problem
    return result
