"""What the gateway set on each node, and what each node acknowledged: ``node-settings.json`` in the data directory.

One entry per node, written whole (temporary file, fsync, rename) before anything is published, so a gateway
restart loses neither a change the node has not acknowledged yet nor the version sequence:

```json
{"nodes": {"wl-0007": {"desired": {"active_s": 120, "levels.caution": 2.7}, "version": 95000042,
                       "applied": {"active_s": 120}, "applied_version": 95000017,
                       "rejected": null}}}
```
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from kakehashi.log import get_logger

__all__ = ["VERSION_EPOCH", "NodeSettingsState", "NodeSettingsStore", "next_version"]

log = get_logger(__name__)

VERSION_EPOCH = 1_700_000_000
"""Versions are at least the clock's seconds since 2023-11-14 (like the node's boot counter), so a gateway whose
state was lost, or a node moved from another gateway, still gets versions above the ones it holds."""


@dataclass
class NodeSettingsState:
    """One node's settings as far as the gateway knows."""

    desired: dict[str, Any] = field(default_factory=dict)
    """Every setting the gateway was asked to set on the node (flat keys), merged: each message carries all of
    them, so the newest message the node applies leaves it with the whole desired set."""
    version: int = 0
    """The newest version sent (0: none)."""
    applied: dict[str, Any] = field(default_factory=dict)
    """The settings of the newest version the node acknowledged as applied."""
    applied_version: int = 0
    rejected: dict[str, Any] | None = None
    """``{"version": n, "reason": "..."}`` when the node refused the newest version sent."""

    @property
    def pending(self) -> bool:
        """A version was sent that the node has neither applied nor refused."""
        refused = self.rejected is not None and self.rejected.get("version") == self.version
        return self.version > self.applied_version and not refused

    def reported(self) -> dict[str, Any]:
        """The node's part of the gateway's reported document (``devices.<node>``)."""
        return {
            "settings_version": self.applied_version,
            "settings": dict(self.applied),
            "pending": self.pending,
            "pending_version": self.version if self.pending else None,
            "rejected": self.rejected,
        }


def next_version(state: NodeSettingsState, now: float) -> int:
    """Above every version sent to the node, and at least the seconds since :data:`VERSION_EPOCH`."""
    return max(state.version + 1, state.applied_version + 1, int(now) - VERSION_EPOCH)


class NodeSettingsStore:
    """The per-node states, loaded once and saved whole after every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.nodes: dict[str, NodeSettingsState] = self._load()

    def _load(self) -> dict[str, NodeSettingsState]:
        try:
            doc = orjson.loads(self.path.read_bytes())
            return {node: NodeSettingsState(**entry) for node, entry in doc["nodes"].items()}
        except FileNotFoundError:
            return {}
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            log.warning("node_settings_state_damaged", path=str(self.path), detail=str(exc))
            return {}

    def state(self, node: str) -> NodeSettingsState:
        """The node's state (a new, empty one the first time)."""
        return self.nodes.setdefault(node, NodeSettingsState())

    def save(self) -> None:
        doc = {"nodes": {node: asdict(state) for node, state in sorted(self.nodes.items())}}
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            f.write(orjson.dumps(doc))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
