"""Test helpers for the node firmware on the MicroPython unix port: see :mod:`hw.node.unixport`."""

from __future__ import annotations

from pathlib import Path

from hw.node.unixport import MICROPYTHON, Device, MipIndex, make_device, serving, umqtt_sources
from kakehashi.mqtt import TlsIdentity

__all__ = ["MICROPYTHON", "Device", "MipIndex", "edge_device", "serving", "umqtt_sources"]


def edge_device(root: Path, lib: Path, identity: TlsIdentity) -> Device:
    """A node filesystem in ``root`` holding ``identity`` in DER, as the flash tool would write it."""
    return make_device(root, lib, identity.ca_file, identity.cert_file, identity.key_file)
