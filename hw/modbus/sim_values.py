"""Animators: the changing engineering values a simulated device shows, one per point, driven by its ``sim`` spec.

An animator is called with the simulation time in seconds (wall time since start times the speed-up) on every read
of its point and returns the value to show then: mains voltage wandering around its nominal value, power that
varies, totalisers that only ever grow, a water level that follows a slow tide with rain pulses, a counter that
steps once per read. Points without a ``sim`` spec show a constant (0, or ``min`` for writable setpoints).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from hw.modbus.model import DataType, Point, PointValue, SimSpec

__all__ = ["Animator", "make_animator"]

Animator = Callable[[float], PointValue]
"""Returns a point's value at simulation time ``t`` (seconds)."""

_TAU = 2 * math.pi


def _wave(spec: SimSpec, rng: random.Random) -> Animator:
    def value(t: float) -> float:
        noise = spec.noise * rng.uniform(-1.0, 1.0) if spec.noise else 0.0
        return spec.mean + spec.amplitude * math.sin(_TAU * t / spec.period_s) + noise

    return value


def _counter(spec: SimSpec) -> Animator:
    state = {"total": spec.value, "t": 0.0}

    def value(t: float) -> float:
        elapsed = max(0.0, t - state["t"])
        rate = max(0.0, spec.rate * (1.0 + spec.amplitude * math.sin(_TAU * t / spec.period_s)))
        state["total"] += rate * elapsed
        state["t"] = max(t, state["t"])
        return state["total"]

    return value


def _tide(spec: SimSpec, rng: random.Random) -> Animator:
    def value(t: float) -> float:
        level = spec.mean + spec.amplitude * math.sin(_TAU * t / spec.period_s)
        if spec.rain and spec.rain_every_s > 0:
            # A rain event in the middle of every rain_every_s window: the level rises and falls back smoothly.
            phase = (t % spec.rain_every_s) / spec.rain_every_s - 0.5
            level += spec.rain * math.exp(-((phase / 0.1) ** 2))
        if spec.noise:
            level += spec.noise * rng.uniform(-1.0, 1.0)
        return level

    return value


def _sequence(spec: SimSpec, point: Point) -> Animator:
    modulus = 1 << (16 * point.type.width)
    state = {"next": int(spec.value)}

    def value(_t: float) -> int:
        current = state["next"] % modulus
        state["next"] = current + 1
        return current

    return value


def _random(spec: SimSpec, rng: random.Random) -> Animator:
    return lambda _t: rng.uniform(spec.low, spec.high)


def _constant(value: PointValue) -> Animator:
    return lambda _t: value


def make_animator(point: Point, rng: random.Random) -> Animator:
    """The animator of ``point``: from its ``sim`` spec, or a constant when it has none."""
    spec = point.sim
    if spec is None:
        if point.type is DataType.BOOL:
            return _constant(False)
        return _constant(point.minimum if point.minimum is not None and point.minimum > 0 else 0)
    if point.type is DataType.BOOL:
        return _constant(bool(spec.value))
    match spec.kind:
        case "wave":
            return _wave(spec, rng)
        case "counter":
            return _counter(spec)
        case "tide":
            return _tide(spec, rng)
        case "sequence":
            return _sequence(spec, point)
        case "random":
            return _random(spec, rng)
        case _:
            return _constant(int(spec.value) if spec.value.is_integer() and point.type.is_integer else spec.value)
