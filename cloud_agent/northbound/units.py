"""SenML units to UN/CEFACT common codes (Recommendation 20), and the few unit conversions the mapping needs.

This is the one place the northbound feed decides what ``unitCode`` a value carries. Readings arrive in SenML units
(RFC 8428 / 8798 symbols as the hardware profiles write them: ``m``, ``Wh``, ``l/s``, ``Cel``, ``/``...); a Smart Data
Models attribute sometimes wants another unit of the same dimension (``height`` in metres when an LPWA gauge reports
centimetres, ``totalActiveEnergyImport`` in kWh when a meter reports Wh), so :func:`convert` scales the value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = ["CEFACT", "UnitError", "convert", "unit_code"]

CEFACT: Final[Mapping[str, str]] = {
    # length
    "m": "MTR",
    "cm": "CMT",
    "mm": "MMT",
    # electricity
    "V": "VLT",
    "mV": "2Z",
    "A": "AMP",
    "W": "WTT",
    "kW": "KWT",
    "VA": "D46",
    "kVA": "KVA",
    "kvar": "KVR",
    "Wh": "WHR",
    "kWh": "KWH",
    "kvarh": "K3",
    "Hz": "HTZ",
    # volume and flow
    "l": "LTR",
    "m3": "MTQ",
    "l/s": "G51",
    "l/h": "E32",
    "m3/s": "MQS",
    "m3/h": "MQH",
    # other
    "Cel": "CEL",
    "%": "P1",
    "/": "C62",
    "1": "C62",
    "dBm": "DBM",
    "dB": "2N",
    "s": "SEC",
    "h": "HUR",
}
"""SenML unit symbol -> UN/CEFACT common code."""

_FACTORS: Final[Mapping[tuple[str, str], float]] = {
    ("cm", "m"): 0.01,
    ("mm", "m"): 0.001,
    ("Wh", "kWh"): 0.001,
    ("var", "kvar"): 0.001,
    ("varh", "kvarh"): 0.001,
    ("W", "kW"): 0.001,
    ("VA", "kVA"): 0.001,
    ("l", "m3"): 0.001,
    ("m3", "l"): 1000.0,
    ("l/s", "l/h"): 3600.0,
    ("m3/h", "l/h"): 1000.0,
    ("%", "/"): 0.01,
    ("mV", "V"): 0.001,
}


class UnitError(ValueError):
    """A value's unit cannot be converted to the unit an attribute needs."""


def unit_code(unit: str | None) -> str | None:
    """The UN/CEFACT code of a SenML unit, or ``None`` when the unit is unknown or absent."""
    return CEFACT.get(unit) if unit is not None else None


def convert(value: float, unit: str | None, target: str) -> float:
    """``value`` (in ``unit``) expressed in ``target``; :class:`UnitError` if there is no conversion between them."""
    if unit == target:
        return value
    if unit is None:
        raise UnitError(f"no unit given, {target} needed")
    factor = _FACTORS.get((unit, target))
    if factor is None:
        raise UnitError(f"cannot convert {unit} to {target}")
    return value * factor
