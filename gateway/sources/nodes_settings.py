"""Desired settings for the nodes bound to this gateway: checked, sent on ``down/config``, acknowledged, reported.

The twin (:mod:`gateway.twin`) hands over the ``devices`` part of a desired delta, ``{"<node>": {"active_s": 120,
"levels.caution": 2.7}}``. Each node's delta is checked against what the firmware accepts
(:mod:`gateway.node_settings`); what passes is merged into the node's desired settings, which get a new version and
are stored (:mod:`gateway.node_settings_store`) before they are published on ``kn/v1/<node>/down/config`` in the
firmware's format, the wire's desired-message shape::

    {"v": 1, "version": 95000042, "ts": 1795000042.1, "delta": {"active_s": 120, "levels.caution": 2.7}}

The message carries *all* the node's desired settings, not only the change: the firmware merges each delta it applies
into ``data/remote.json``, so whichever message the node applies last leaves it with the whole desired set, even if
an older one was lost.

Delivery: QoS 1, **not retained**. The node connects with ``clean_session=False`` and subscribes to
``kn/v1/<node>/down/#`` at every wake, so the local broker (with persistence) queues the message in the node's
session while it sleeps and delivers it at its next wake that connects. A retained message would be delivered again
at every subscription, i.e. every wake, and the node would answer each copy "stale version". A node's session
exists only once it has connected (and is gone if the broker lost its state); a message published without it is
dropped by the broker. So pending versions are published again whenever the relay (re)connects (after a gateway
restart, say), and once more at the first uplink of each node with a pending version after that, before the
``down/ack``, while the node still reads its downlink. A duplicate is harmless: the node refuses it as stale.

Acknowledgements: the node answers ``config-<version>`` on ``up/acks``: ``succeeded`` (applied; its result lists the
keys) or ``rejected`` with its reason. ``stale version`` for the version the gateway waits for means the node
already holds that version or a newer one (its ``succeeded`` was lost, or the gateway's state was): the settings are
sent again under a new version. Every outcome is stored and the twin re-reports (``devices.<node>`` in the reported
document, see :meth:`NodeSettingsState.reported <gateway.node_settings_store.NodeSettingsState.reported>`).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

from gateway.node_settings import check_settings
from gateway.node_settings_store import NodeSettingsState, NodeSettingsStore, next_version
from kakehashi import wire
from kakehashi.log import get_logger
from kakehashi.mqtt_link import LinkError, MqttLink

__all__ = ["STALE_REASON", "NodeSettingsRelay"]

log = get_logger(__name__)

_CONFIG_ACK: Final = re.compile(r"config-([0-9]{1,18})")
STALE_REASON: Final = "stale version"
"""The firmware's reason for a version at or below the one it holds (``edge/khnode/downlink.py``)."""


class NodeSettingsRelay:
    """Desired settings of the bound nodes, from the twin to the nodes and their acknowledgements back."""

    def __init__(self, store: NodeSettingsStore, bound: frozenset[str]) -> None:
        self._store = store
        self._bound = bound
        self._link: MqttLink | None = None
        self._heard: set[str] = set()  # nodes heard from since the link came up: their sessions exist
        self.on_change: Callable[[], Awaitable[None]] | None = None
        """Called after a node's acknowledgement changed what is reported (the gateway re-reports its twin)."""
        self.counts: Counter[str] = Counter()

    async def attach(self, link: MqttLink | None) -> None:
        """The relay's link to the local broker is up (``link``: pending versions are published) or down."""
        self._link = link
        self._heard.clear()
        if link is not None:
            for node, state in sorted(self._store.nodes.items()):
                if node in self._bound and state.pending:
                    await self._publish(node, state)

    async def apply_desired(self, devices: Mapping[str, Any]) -> dict[str, str]:
        """Take the ``devices`` part of a desired delta; per-key results (``devices.<id>[.<key>]``)."""
        results: dict[str, str] = {}
        changed: list[str] = []
        for device, delta in devices.items():
            if device not in self._bound:
                results[f"devices.{device}"] = (
                    f"rejected: {device} is not a node bound to this gateway (only bound nodes take device settings)"
                )
                continue
            if not isinstance(delta, dict) or not delta:
                results[f"devices.{device}"] = "rejected: a node's settings must be a non-empty object"
                continue
            state = self._store.state(device)
            check = check_settings(delta, state.desired)
            results.update({f"devices.{device}.{key}": f"rejected: {why}" for key, why in check.rejected.items()})
            if not check.accepted:
                continue
            merged = {**state.desired, **check.accepted}
            if merged != state.desired:
                state.desired = merged
                self._new_version(state)
                changed.append(device)
            outcome = self._outcome(state)
            results.update({f"devices.{device}.{key}": outcome for key in check.accepted})
        if changed:
            self._store.save()
            for device in changed:
                log.info("node_settings_desired", node=device, version=self._store.state(device).version)
                await self._publish(device, self._store.state(device))
        return results

    @staticmethod
    def _outcome(state: NodeSettingsState) -> str:
        if state.pending:
            return f"relayed: node settings version {state.version}, pending the node's acknowledgement"
        if state.rejected is not None:
            return f"rejected: the node refused settings version {state.version}: {state.rejected['reason']}"
        return f"unchanged: the node already applied it (settings version {state.version})"

    def _new_version(self, state: NodeSettingsState) -> None:
        state.version = next_version(state, time.time())
        state.rejected = None

    async def _publish(self, node: str, state: NodeSettingsState) -> None:
        link = self._link
        if link is None:
            log.info("node_settings_deferred", node=node, version=state.version, reason="local broker not connected")
            return
        message = wire.DesiredMessage(version=state.version, sent_at=time.time(), delta=dict(state.desired))
        try:
            await link.publish(
                wire.node_topic_for(node, wire.NodeChannel.CONFIG), wire.encode_desired(message), qos=wire.QOS
            )
        except LinkError as exc:
            log.warning("node_settings_deferred", node=node, version=state.version, reason=exc.message)
            return
        self.counts["sent"] += 1
        log.info("node_settings_sent", node=node, version=state.version, settings=state.desired)

    async def on_uplink(self, node: str) -> None:
        """A message from ``node`` arrived: its session exists now; publish again a version it may never have had."""
        if node in self._heard:
            return
        self._heard.add(node)
        state = self._store.nodes.get(node)
        if state is not None and state.pending:
            self.counts["resent_first_heard"] += 1
            await self._publish(node, state)

    async def on_acks(self, node: str, acks: Sequence[wire.CommandAck]) -> list[wire.CommandAck]:
        """Take the node's settings acknowledgements (``config-<n>``); answer the others (commands' acks)."""
        others: list[wire.CommandAck] = []
        changed = False
        for ack in acks:
            match = _CONFIG_ACK.fullmatch(ack.command_id)
            if match is None:
                others.append(ack)
                continue
            state = self._store.nodes.get(node)
            version = int(match[1])
            if state is None or version != state.version or not state.pending:
                self.counts["acks_ignored"] += 1
                log.info("node_settings_ack_ignored", node=node, version=version, status=ack.status.value)
                continue
            changed = await self._settle(node, state, ack) or changed
        if changed:
            self._store.save()
            if self.on_change is not None:
                await self.on_change()
        return others

    async def _settle(self, node: str, state: NodeSettingsState, ack: wire.CommandAck) -> bool:
        """Record the node's answer to the version it was waiting for; whether anything changed."""
        if ack.status is wire.AckStatus.SUCCEEDED:
            state.applied = dict(state.desired)
            state.applied_version = state.version
            state.rejected = None
            self.counts["applied"] += 1
            log.info("node_settings_applied", node=node, version=state.version, result=ack.result)
            return True
        if ack.status is wire.AckStatus.REJECTED and ack.reason == STALE_REASON:
            self._new_version(state)
            self._store.save()
            self.counts["resent_stale"] += 1
            log.warning("node_settings_stale", node=node, resent_as=state.version)
            await self._publish(node, state)
            return True
        if ack.status is wire.AckStatus.DELIVERED:
            return False
        state.rejected = {"version": state.version, "reason": ack.reason or ack.status.value}
        self.counts["rejected"] += 1
        log.warning("node_settings_rejected", node=node, version=state.version, reason=state.rejected["reason"])
        return True

    def reported(self) -> dict[str, Any]:
        """``devices`` of the reported document: every bound node the gateway has sent settings to."""
        return {
            node: state.reported()
            for node, state in sorted(self._store.nodes.items())
            if node in self._bound and state.version > 0
        }
