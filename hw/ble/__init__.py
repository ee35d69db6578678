"""BLE beacon formats and simulated tags: decoders (iBeacon, Eddystone, AltBeacon, BTHome v2), payload tag keys,
frame builders, and a bleak scanner backend that hears a simulated population instead of a radio.

Modules: :mod:`~hw.ble.formats` (the format table, ``formats.toml``), :mod:`~hw.ble.decoders`,
:mod:`~hw.ble.keys`, :mod:`~hw.ble.frames`, :mod:`~hw.ble.population`, :mod:`~hw.ble.simulator`.
Depends on bleak only (for the simulator), on nothing else in the project.
"""

from hw.ble.decoders import (
    AltBeacon,
    Beacon,
    BeaconFormatError,
    BTHome,
    BTHomeObject,
    EddystoneIgnored,
    EddystoneTlm,
    EddystoneUid,
    IBeacon,
    decode_advertisement,
    parse_bthome,
    parse_eddystone,
    parse_manufacturer,
    parse_service,
    tag_key,
)
from hw.ble.keys import TagKeyError, normalize_tag_key

__all__ = [
    "AltBeacon",
    "BTHome",
    "BTHomeObject",
    "Beacon",
    "BeaconFormatError",
    "EddystoneIgnored",
    "EddystoneTlm",
    "EddystoneUid",
    "IBeacon",
    "TagKeyError",
    "decode_advertisement",
    "normalize_tag_key",
    "parse_bthome",
    "parse_eddystone",
    "parse_manufacturer",
    "parse_service",
    "tag_key",
]
