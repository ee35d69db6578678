"""Crowd counts and consented tag pseudonyms computed from the registry's stored watch-tag readings (restart-safe).

This engine keeps nothing that matters in memory (the consent rules, pseudonyms and entity builders are in
:mod:`cloud_agent.northbound.privacy`). :meth:`StoredCrowdCounts.due` asks the registry for the number of
distinct watch tags per zone and hour among the *stored* readings (the registry stores a tag's readings only while
it is consented and active, and keeps them for the tag's retention period) and returns the entities that changed
since the last call:

* ``CrowdFlowObserved`` per zone and hour (:func:`~cloud_agent.northbound.privacy.crowd_entity`): every call
  recounts the ``recent_hours`` newest hours (index ``readings(device_id, observed_at)``: only those hours' tag
  readings are read); every ``sweep_s`` and at the first call, the whole retention window is recounted, which is
  how a late sighting of an older hour (a gateway replaying its outbox) corrects that hour. A recount is the full
  distinct count from storage, so after a restart the current hour goes out with the same count as before, never a
  lower one; a count lower than the one sent (only possible when readings were deleted) is held back and counted.
  The window is ``keep_hours``, and never longer than the shortest retention of any watch tag: an older hour may
  have lost readings to retention already, and a recount would undercount it. A zone-hour with fewer than
  ``min_count`` distinct tags is held back (k-anonymity) until it has enough.
* a pseudonymised ``Device`` per consented tag whose scopes allow it (:func:`sharing`), with the newest sighting's
  zone (and position, battery where the scopes say so), when that state changed. A tag not seen for
  ``tag_retention_s`` is no longer sent; :mod:`cloud_agent.northbound.tag_retention` deletes its entity.

The zone's position is that of its first located gateway (by id), so it is the same after a restart. No raw tag id
ever reaches an entity: tags are only counted in SQL, and the shared ones go out under their pseudonym.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cloud_agent.northbound.entities import Entity
from cloud_agent.northbound.privacy import (
    HOUR,
    Pseudonymiser,
    TagShare,
    crowd_entity,
    hour_of,
    share_scopes,
    tag_entity,
)
from device_registry.lifecycle import WATCH_TAG
from device_registry.models import Location
from device_registry.northbound_methods import CrowdCount, GatewayZone, WatchTagState
from kakehashi.log import get_logger

__all__ = ["CrowdStore", "StoredCrowdCounts", "TagStates", "sharing"]

log = get_logger(__name__)


class TagStates(Protocol):
    """The registry's watch-tag records with their newest sighting."""

    async def watch_tag_states(self, *, sharing_only: bool = False) -> list[WatchTagState]: ...


class CrowdStore(TagStates, Protocol):
    """What :class:`StoredCrowdCounts` reads from the registry (:class:`~device_registry.Registry` has it all)."""

    async def watch_tag_counts(self, *, since: float, until: float) -> list[CrowdCount]: ...

    async def watch_tag_shortest_retention_s(self) -> int | None: ...

    async def gateway_zones(self) -> list[GatewayZone]: ...


def sharing(tag: WatchTagState, now: float, retention_s: float) -> frozenset[str]:
    """The scopes under which ``tag`` may be at the City OS now: consented, active, a ``zone`` scope, and seen
    within ``retention_s``; empty when its pseudonymised ``Device`` must not be (or no longer be) there."""
    scopes = share_scopes(WATCH_TAG, tag.consent, tag.state, tag.share)
    if not scopes or tag.last_seen is None or tag.gateway_id is None or tag.last_seen < now - retention_s:
        return frozenset()
    return scopes


@dataclass(frozen=True, slots=True)
class _Zone:
    name: str
    location: Location | None


def _zones(gateways: list[GatewayZone]) -> tuple[dict[str, _Zone], dict[str, Location]]:
    """Each gateway's zone (with the gateway's own position), and each zone's position (its first located gateway)."""
    of_gateway: dict[str, _Zone] = {}
    of_zone: dict[str, Location] = {}
    for gateway in gateways:
        located = gateway.latitude is not None and gateway.longitude is not None
        location = Location(gateway.latitude, gateway.longitude) if located else None
        of_gateway[gateway.gateway_id] = _Zone(gateway.zone, location)
        if location is not None:
            of_zone.setdefault(gateway.zone, location)
    return of_gateway, of_zone


class StoredCrowdCounts:
    """Hourly crowd counts and consented tag pseudonyms from the registry's stored watch-tag readings.

    Call :meth:`due` periodically (every ``crowd_flush_s``); it returns what changed since the previous call.
    Only what was returned is remembered, so a new instance (after a restart) sends the window's counts and the
    consented tags' state once again, with the same values: upserts of the same ids.
    """

    def __init__(
        self,
        registry: CrowdStore,
        secret: bytes,
        *,
        keep_hours: int = 24,
        min_count: int = 1,
        recent_hours: int = 2,
        sweep_s: float = 600.0,
        tag_retention_s: float = 86_400.0,
    ) -> None:
        if min_count < 1:
            raise ValueError("min_count must be at least 1")
        if keep_hours < 1 or recent_hours < 1:
            raise ValueError("keep_hours and recent_hours must be at least 1")
        if sweep_s <= 0 or tag_retention_s <= 0:
            raise ValueError("sweep_s and tag_retention_s must be above 0")
        self._registry = registry
        self._pseudonyms = Pseudonymiser(secret)
        self._keep_s = keep_hours * HOUR
        self._min_count = min_count
        self._recent_s = (recent_hours - 1) * HOUR
        self._sweep_s = sweep_s
        self._tag_retention_s = tag_retention_s
        self._swept_at: float | None = None
        self._sent: dict[tuple[str, int], int] = {}
        self._tags_sent: dict[str, TagShare] = {}
        self.held_back = 0
        """Zone-hour recounts below ``min_count`` (not sent)."""
        self.held_lower = 0
        """Zone-hour recounts lower than the count already sent (not sent)."""
        self.bad = 0
        """Counts or tags that could not be made into an entity (logged)."""

    async def due(self, now: float) -> list[Entity]:
        """The entities that changed since the last call: zone-hours up to the one holding ``now``, then tags."""
        counts = await self._recount(now)
        tags = await self._registry.watch_tag_states(sharing_only=True)
        if not counts and not tags and not self._tags_sent:
            return []
        of_gateway, of_zone = _zones(await self._registry.gateway_zones())
        out: list[Entity] = []
        for count in counts:
            try:
                out.append(crowd_entity(count.zone, count.hour, count.count, of_zone.get(count.zone)))
            except (ValueError, OverflowError) as exc:
                self.bad += 1
                log.warning("crowd_count_unusable", zone=count.zone[:64], hour=count.hour, error=str(exc)[:200])
                continue
            self._sent[(count.zone, count.hour)] = count.count
        out.extend(self._tag_entities(tags, of_gateway, now))
        return out

    async def _horizon(self, now: float) -> int:
        """The oldest hour start that may be recounted: whole hours inside the window and every tag's retention."""
        window = float(self._keep_s)
        shortest = await self._registry.watch_tag_shortest_retention_s()
        if shortest is not None:
            window = min(window, float(shortest))
        oldest = now - window
        start = hour_of(oldest)
        return start if start >= oldest else start + HOUR

    async def _recount(self, now: float) -> list[CrowdCount]:
        horizon = await self._horizon(now)
        current = hour_of(now)
        sweep = self._swept_at is None or not 0 <= now - self._swept_at < self._sweep_s
        since = horizon if sweep else max(horizon, current - self._recent_s)
        if sweep:
            self._swept_at = now
        for key in [k for k in self._sent if k[1] < horizon]:
            del self._sent[key]
        if since > current:
            return []
        changed: list[CrowdCount] = []
        for count in await self._registry.watch_tag_counts(since=since, until=current + HOUR):
            if not since <= count.hour <= current:
                continue
            before = self._sent.get((count.zone, count.hour))
            if count.count < self._min_count:
                self.held_back += 1
            elif before is not None and count.count < before:
                self.held_lower += 1
                log.warning("crowd_count_lower", zone=count.zone[:64], hour=count.hour, sent=before, now=count.count)
            elif before != count.count:
                changed.append(count)
        return sorted(changed, key=lambda c: (c.hour, c.zone))

    def _tag_entities(self, tags: list[WatchTagState], of_gateway: dict[str, _Zone], now: float) -> list[Entity]:
        out: list[Entity] = []
        current: set[str] = set()
        for tag in tags:
            scopes = sharing(tag, now, self._tag_retention_s)
            if not scopes or tag.last_seen is None or tag.gateway_id is None:
                continue
            pseudonym = self._pseudonyms.pseudonym(tag.tag_id)
            current.add(pseudonym)
            zone = of_gateway.get(tag.gateway_id, _Zone(tag.gateway_id, None))
            battery = tag.battery if "battery" in scopes and tag.battery is not None else None
            if battery is not None and not 0 <= battery <= 100:
                battery = None
            state = TagShare(
                zone.name,
                tag.last_seen,
                scopes,
                zone.location if "location" in scopes else None,
                battery,
                tag.battery_at if battery is not None else None,
            )
            if self._tags_sent.get(pseudonym) == state:
                continue
            try:
                out.append(tag_entity(pseudonym, state))
            except (ValueError, OverflowError) as exc:
                self.bad += 1
                log.warning("tag_state_unusable", pseudonym=pseudonym, error=str(exc)[:200])
                continue
            self._tags_sent[pseudonym] = state
        for gone in set(self._tags_sent) - current:  # sent again if it may be shared again
            del self._tags_sent[gone]
        return out
