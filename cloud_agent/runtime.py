"""What the HTTPS API is handed by the running agent: the registry, the fleet CA and the actions only the agent can do.

The API (:mod:`cloud_agent.api`) changes the registry itself; what must reach the fleet afterwards goes through
:class:`AgentActions`, which the agent service implements (:mod:`cloud_agent.service`) and tests replace with a
recorder: a desired change is delivered to the gateway if it is online, and revoked certificates are revoked at the
CA too, so that the brokers (which reload the CRL within a second of a PKI change) cut the identity off.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cloud_agent.pki.authority import CertificateAuthority
from device_registry import Registry
from kakehashi.wire import JSONObject


class AgentActions(Protocol):
    """Fleet-side effects of registry changes made through the API."""

    async def desired_changed(self, gateway_id: str) -> None:
        """A desired delta was queued for ``gateway_id``: deliver the pending deltas now if it is online."""

    async def commands_changed(self, gateway_id: str) -> None:
        """New or cancelled commands for the gateway: send what can be sent now."""

    async def identity_revoked(self, entity_id: str, reason: str) -> None:
        """The registry revoked ``entity_id``'s certificates (decommission, replaced hardware): revoke them at the
        CA and publish the CRL. ``reason`` is a CRL reason (a key of ``cloud_agent.pki.authority.REVOCATION_REASONS``:
        ``cessation_of_operation``, ``superseded``, ``key_compromise``)."""


@dataclass(frozen=True, slots=True)
class AgentRuntime:
    """The running agent as the API sees it."""

    registry: Registry
    actions: AgentActions
    authority: CertificateAuthority | None = None
    """The fleet CA, when this agent enrolls gateways (None: enrollment answers 503 with a reason)."""
    metrics: Callable[[], JSONObject] = field(default=dict)
    """Counters of the running agent (ingest, refusals, errors), shown by ``GET /v1/agent/metrics``."""
