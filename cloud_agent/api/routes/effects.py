"""Fleet-side effects of a committed registry change, through :class:`~cloud_agent.runtime.AgentActions`.

A desired delta is already queued in the registry when :func:`deliver_desired` runs, so a failed delivery is logged
and the delta goes out when the gateway next connects; the answer still reports the change. A revoked identity must
reach the CA and the brokers, so a failure of :func:`revoke_identity` is an error answer (the registry change stays
committed; the agent's log has the cause).
"""

from __future__ import annotations

from cloud_agent.runtime import AgentRuntime
from kakehashi.log import get_logger

log = get_logger(__name__)


async def deliver_desired(runtime: AgentRuntime, gateway_id: str | None) -> None:
    """Ask the agent to deliver the pending desired deltas of ``gateway_id`` now (if any gateway)."""
    if gateway_id is None:
        return
    try:
        await runtime.actions.desired_changed(gateway_id)
    except Exception as exc:
        log.exception("api_desired_delivery_failed", gateway=gateway_id, error=type(exc).__name__)


async def revoke_identity(runtime: AgentRuntime, entity_id: str, reason: str) -> None:
    """Have the agent revoke ``entity_id``'s certificates at the CA and publish the CRL (``reason``: a CRL reason)."""
    log.info("api_identity_revoked", entity=entity_id, reason=reason)
    await runtime.actions.identity_revoked(entity_id, reason)
