"""Tag keys: the stable name of a watch tag or sensor, taken from its payload and never from its (rotating) MAC.

Key forms (all lowercase except a BTHome local name, which is kept verbatim, and a BTHome address, kept uppercase):

==========================================  ================================================================
``ibeacon:<uuid>:<major>:<minor>``          proximity UUID as 8-4-4-4-12 hex, major and minor as decimals
``eddystone:<namespace>:<instance>``        Eddystone-UID namespace (20 hex digits) and instance (12)
``altbeacon:<beacon-id>``                   AltBeacon beacon id (40 hex digits)
``bthome:name:<local-name>``                a BTHome device by its advertised local name
``bthome:addr:<AA:BB:CC:DD:EE:FF>``         a BTHome device by its Bluetooth address (fixed-address sensors only)
==========================================  ================================================================

BTHome carries no id in its payload. A local name is the normal key. Keying by address is a privacy trade-off:
a fixed address is a stable identifier anyone can follow, so it is meant only for sensors that stay in one place
(a water-level or room sensor), never for tags people carry; phones and modern tags rotate their address anyway.
"""

from __future__ import annotations

import re
from typing import Final


class TagKeyError(ValueError):
    """A tag key does not follow one of the key forms."""


_HEX: Final = re.compile(r"[0-9a-f]+")
_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_ADDRESS: Final = re.compile(r"[0-9A-F]{2}(?::[0-9A-F]{2}){5}")
MAX_LOCAL_NAME: Final = 29
"""Longest local name that fits a legacy advertisement (31 bytes minus the AD length and type)."""

FORMS: Final = (
    "ibeacon:<uuid>:<major>:<minor>",
    "eddystone:<namespace-hex>:<instance-hex>",
    "altbeacon:<beacon-id-hex>",
    "bthome:name:<local-name>",
    "bthome:addr:<AA:BB:CC:DD:EE:FF>",
)


def ibeacon_key(uuid: str, major: int, minor: int) -> str:
    return f"ibeacon:{uuid}:{major}:{minor}"


def eddystone_key(namespace: bytes, instance: bytes) -> str:
    return f"eddystone:{namespace.hex()}:{instance.hex()}"


def altbeacon_key(beacon_id: bytes) -> str:
    return f"altbeacon:{beacon_id.hex()}"


def bthome_name_key(local_name: str) -> str:
    return f"bthome:name:{local_name}"


def bthome_address_key(address: str) -> str:
    return f"bthome:addr:{address.upper()}"


def _fail(text: str, why: str) -> TagKeyError:
    return TagKeyError(f"invalid tag key {text!r}: {why}; use one of {', '.join(FORMS)}")


def _hex(text: str, value: str, digits: int, what: str) -> str:
    value = value.lower()
    if len(value) != digits or not _HEX.fullmatch(value):
        raise _fail(text, f"{what} must be {digits} hex digits")
    return value


def _u16(text: str, value: str, what: str) -> int:
    if not value.isascii() or not value.isdigit() or not 0 <= int(value) <= 0xFFFF:
        raise _fail(text, f"{what} must be a decimal number 0-65535")
    return int(value)


def normalize_tag_key(text: str) -> str:
    """Return the canonical form of a tag key (hex lowercased, numbers without leading zeros) or raise
    :class:`TagKeyError` saying which form was meant and what is wrong."""
    kind, _, rest = text.partition(":")
    if kind == "ibeacon":
        parts = rest.split(":")
        if len(parts) != 3 or not _UUID.fullmatch(parts[0].lower()):
            raise _fail(text, "an iBeacon key is ibeacon:<uuid 8-4-4-4-12>:<major>:<minor>")
        return ibeacon_key(parts[0].lower(), _u16(text, parts[1], "major"), _u16(text, parts[2], "minor"))
    if kind == "eddystone":
        parts = rest.split(":")
        if len(parts) != 2:
            raise _fail(text, "an Eddystone key is eddystone:<namespace>:<instance>")
        namespace = _hex(text, parts[0], 20, "namespace")
        instance = _hex(text, parts[1], 12, "instance")
        return f"eddystone:{namespace}:{instance}"
    if kind == "altbeacon":
        return f"altbeacon:{_hex(text, rest, 40, 'beacon id')}"
    if kind == "bthome":
        how, _, value = rest.partition(":")
        if how == "name":
            if not 0 < len(value.encode()) <= MAX_LOCAL_NAME or not value.isprintable():
                raise _fail(text, f"a BTHome local name is 1-{MAX_LOCAL_NAME} printable bytes")
            return bthome_name_key(value)
        if how == "addr":
            if not _ADDRESS.fullmatch(value.upper()):
                raise _fail(text, "a BTHome address is six hex byte pairs separated by ':'")
            return bthome_address_key(value)
        raise _fail(text, "a BTHome key is bthome:name:<local-name> or bthome:addr:<address>")
    raise _fail(text, f"unknown format {kind!r}")


def is_address_key(key: str) -> bool:
    """True for keys that name a device by its Bluetooth address (allowed for fixed-address sensors only)."""
    return key.startswith("bthome:addr:")
