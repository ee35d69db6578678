"""Validity policy of the fleet PKI, as data: lifetimes per CA level and role, renewal and CRL timing.

Changing a lifetime here changes what the CA issues next; certificates already issued keep their dates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType

from kakehashi.identity import Role


def _leaf_defaults() -> MappingProxyType[Role, timedelta]:
    return MappingProxyType(
        {
            Role.GATEWAY: timedelta(days=365),
            Role.NODE: timedelta(days=730),
            Role.SERVICE: timedelta(days=90),
        }
    )


@dataclass(frozen=True)
class ValidityPolicy:
    """How long each kind of certificate and CRL lives, and when to renew them."""

    root_ca: timedelta = timedelta(days=7305)  # 20 years
    issuing_ca: timedelta = timedelta(days=1826)  # 5 years
    leaf: MappingProxyType[Role, timedelta] = field(default_factory=_leaf_defaults)
    tls_server: timedelta = timedelta(days=365)
    # a device starts asking for a new certificate this long before its current one expires
    renewal_window: timedelta = timedelta(days=30)
    # CRL nextUpdate = publication + crl_lifetime; a CRL past nextUpdate locks every client out of Mosquitto,
    # so it is re-published as soon as less than crl_refresh_margin remains
    crl_lifetime: timedelta = timedelta(days=7)
    crl_refresh_margin: timedelta = timedelta(days=4)
    # certificates (and CRLs) start this long before "now", so that a peer whose clock is a little behind
    # does not see them as not yet valid
    clock_skew: timedelta = timedelta(minutes=5)

    def leaf_validity(self, role: Role) -> timedelta:
        """The lifetime of a client certificate for ``role``."""
        return self.leaf[role]

    def window(self, now: datetime, lifetime: timedelta) -> tuple[datetime, datetime]:
        """``(not_before, not_after)`` for something issued at ``now`` that lives ``lifetime``."""
        return now - self.clock_skew, now + lifetime

    def renewal_due(self, not_after: datetime, now: datetime) -> bool:
        """True if a certificate ending at ``not_after`` is inside its renewal window at ``now``."""
        return not_after - now <= self.renewal_window

    def crl_refresh_due(self, next_update: datetime, now: datetime) -> bool:
        """True if a CRL whose nextUpdate is ``next_update`` must be re-published at ``now``."""
        return next_update - now < self.crl_refresh_margin


DEFAULT_POLICY = ValidityPolicy()
