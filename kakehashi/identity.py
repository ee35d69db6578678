"""Identity rules shared by every part: id syntax, roles, and the SAN URI that binds a certificate to an id.

Ids are short lowercase strings (``gw-kakogawa-0012``, ``wl-0007``) that are also safe as MQTT topic levels and
file names. A certificate proves an identity through its subject CN (= id) and a SAN URI
``urn:kakehashi:<role>:<id>``.
"""

from __future__ import annotations

import enum
import re

from kakehashi.errors import KakehashiError

ID_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
SAN_URI_PREFIX = "urn:kakehashi:"
LOCAL_BROKER_SUFFIX = ".local"
"""A gateway's local broker answers to ``<gateway id>.local`` (the one name on its server certificate)."""


class Role(enum.StrEnum):
    """What an identity is allowed to be; each role has its own certificate policy and broker permissions."""

    GATEWAY = "gateway"
    NODE = "node"
    SERVICE = "service"


class IdentityError(KakehashiError):
    """An id, role or SAN URI does not follow the identity rules."""

    reason = "identity"


def validate_id(value: str) -> str:
    """Return ``value`` if it is a valid id, else raise :class:`IdentityError` saying how to fix it."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise IdentityError(
            f"invalid id {value!r}: use 1-63 lowercase letters, digits and '-', starting and ending with a "
            "letter or digit (for example gw-kakogawa-0012)"
        )
    return value


def local_broker_name(gateway_id: str) -> str:
    """The host name on the server certificate of ``gateway_id``'s local broker, which its nodes verify."""
    return validate_id(gateway_id) + LOCAL_BROKER_SUFFIX


def parse_role(value: str) -> Role:
    """Return the :class:`Role` named by ``value`` or raise :class:`IdentityError` listing the valid roles."""
    try:
        return Role(value)
    except ValueError:
        valid = ", ".join(r.value for r in Role)
        raise IdentityError(f"unknown role {value!r}: use one of {valid}") from None


def san_uri(role: Role, identity: str) -> str:
    """The SAN URI that names ``identity`` in ``role``: ``urn:kakehashi:<role>:<id>``."""
    return f"{SAN_URI_PREFIX}{role.value}:{validate_id(identity)}"


def parse_san_uri(uri: str) -> tuple[Role, str]:
    """Split a ``urn:kakehashi:<role>:<id>`` URI into its role and id, validating both."""
    if not uri.startswith(SAN_URI_PREFIX):
        raise IdentityError(f"SAN URI {uri!r} is not a Kakehashi identity (expected {SAN_URI_PREFIX}<role>:<id>)")
    role_text, sep, ident = uri[len(SAN_URI_PREFIX) :].partition(":")
    if not sep:
        raise IdentityError(f"SAN URI {uri!r} has no id (expected {SAN_URI_PREFIX}<role>:<id>)")
    return parse_role(role_text), validate_id(ident)
