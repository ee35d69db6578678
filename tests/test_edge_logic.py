"""Property tests of the node firmware's pure logic, run under CPython on the very modules the node runs.

``edge/khnode`` is plain Python that MicroPython and CPython both import: the median filter and fault flags, the
stage machine with hysteresis, the rhythm, the hand-written SenML envelope (decoded here by the gateway's own
``kakehashi.wire``), and the settings checks.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from kakehashi import wire

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "edge"))

from khnode import config, filters, rhythm, senml, stages

levels_st = st.floats(-50, 50, allow_nan=False).map(lambda x: round(x, 3))
samples_st = st.lists(st.one_of(st.none(), levels_st), min_size=1, max_size=15)
thresholds_st = st.lists(st.floats(-10, 20, allow_nan=False), min_size=5, max_size=5, unique=True).map(sorted)
hysteresis_st = st.floats(0, 0.5, allow_nan=False)


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=31))
def test_median_is_the_median(values: list[float]) -> None:
    assert filters.median(values) == pytest.approx(statistics.median(values), rel=1e-12, abs=1e-9)


def test_median_of_nothing_is_none() -> None:
    assert filters.median([]) is None


@given(samples_st, st.one_of(st.none(), levels_st), st.integers(0, 20), st.floats(0.01, 5), st.integers(0, 20))
def test_fault_flags(samples: list[float | None], last: float | None, same: int, spike: float, stuck_n: int) -> None:
    value, flags, same_after = filters.assess(samples, last, same, spike, stuck_n)
    valid = [s for s in samples if s is not None]
    assert (value is None) == (not valid) == bool(flags & filters.NO_DATA)
    assert bool(flags & filters.RANGE) == (len(valid) * 2 <= len(samples))
    if value is not None:
        assert min(valid) <= value <= max(valid)
        assert bool(flags & filters.SPIKE) == (last is not None and abs(value - last) > spike)
        assert bool(flags & filters.STUCK) == (stuck_n > 0 and same_after + 1 >= stuck_n)
        if value != last or len(set(valid)) > 1:
            assert same_after == 0


@given(levels_st, st.integers(3, 9), levels_st)
def test_one_wild_sample_does_not_move_the_median(level: float, n: int, wild: float) -> None:
    value, _, _ = filters.assess([level] * (n - 1) + [wild], level, 0, 1.0, 0)
    assert value == level


def test_a_stuck_sensor_is_flagged_after_stuck_n_identical_bursts() -> None:
    last, same, flags = None, 0, 0
    seen = []
    for _ in range(4):
        last, flags, same = filters.assess([1.234] * 5, last, same, 0.5, 3)
        seen.append(bool(flags & filters.STUCK))
    assert seen == [False, False, True, True]


@given(st.lists(levels_st, min_size=1, max_size=40), thresholds_st, hysteresis_st, st.integers(0, 5))
def test_stage_is_consistent_with_the_thresholds(
    levels: list[float], thresholds: list[float], hysteresis: float, start: int
) -> None:
    s = start
    for level in levels:
        s = stages.stage(level, thresholds, s, hysteresis)
        assert 0 <= s <= 5
        assert s == 5 or level < thresholds[s], "at or above a threshold means at least its stage"
        assert s == 0 or level >= thresholds[s - 1] - hysteresis, "more than hysteresis below means below"
        assert stages.stage(level, thresholds, s, hysteresis) == s, "the same level again changes nothing"


@given(thresholds_st, st.floats(0.01, 0.5), st.integers(1, 5), st.lists(st.floats(0, 1), min_size=1, max_size=30))
def test_a_level_wavering_at_a_threshold_does_not_chatter(
    thresholds: list[float], hysteresis: float, k: int, wobble: list[float]
) -> None:
    top = thresholds[k] if k < 5 else thresholds[k - 1] + 10
    low = max(thresholds[k - 1] - hysteresis, thresholds[k - 2] if k >= 2 else -1e9)
    assume(top - low > 1e-6)
    s = stages.stage(thresholds[k - 1], thresholds, 0, hysteresis)
    assert s == k
    for w in wobble:
        level = low + w * (top - low) * 0.999
        assume(level >= thresholds[k - 1] - hysteresis)
        s = stages.stage(level, thresholds, s, hysteresis)
        assert s == k


@given(st.integers(0, 5), st.integers(0, 5))
def test_alarms_are_crossings_of_the_four_named_thresholds(before: int, after: int) -> None:
    alarm = stages.is_alarm(before, after)
    assert alarm == (before != after and max(before, after) >= 2)
    if alarm:
        direction, code = stages.alarm_code(before, after).split(":")
        assert direction == ("rise" if after > before else "fall")
        assert code in stages.ALARM_CODES


CFG = dict(config.DEFAULTS, node="wl-0007", gateway="127.0.0.1")


@given(st.integers(0, 5), st.integers(0, 5), st.integers(0, 200_000), st.booleans(), st.booleans())
def test_the_rhythm(before: int, after: int, quiet_s: int, flood: bool, forced: bool) -> None:
    report, alarm, sleep_s = rhythm.plan(before, after, CFG, quiet_s, flood, forced)
    assert alarm == stages.is_alarm(before, after)
    if after >= 1 or alarm or flood or forced or quiet_s >= CFG["heartbeat_s"] or before != after:
        assert report
    else:
        assert not report, "below the observation-start level only the daily heartbeat"
    if after >= 1:
        assert sleep_s <= 600, "the 10-minute rhythm above the observation-start level"
    assert sleep_s == (CFG["flood_s"] if flood else CFG["active_s"] if after else CFG["sample_s"])


node_ids = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
quantities = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
values_st = st.one_of(
    st.floats(-1e5, 1e5, allow_nan=False),
    st.integers(-(2**31), 2**31),
    st.booleans(),
    st.from_regex(r"[a-z0-9:_]{0,30}", fullmatch=True),
)


@given(
    node_ids,
    st.integers(1, 2**63 - 1),
    st.integers(senml.MIN_EPOCH, 2**33 - 1),
    st.lists(st.tuples(quantities, values_st, st.sampled_from([None, "m", "V"])), min_size=1, max_size=8),
    st.sampled_from(["synced", "unsynced"]),
)
def test_the_envelope_is_what_the_gateway_decodes(
    node: str, seq: int, ts: int, records: list[tuple[str, Any, str | None]], clock: str
) -> None:
    payload = senml.envelope(seq, ts, clock, node, [senml.record(q, v, u) for q, v, u in records])
    message = wire.decode_readings(payload)
    assert message.seq == seq
    assert message.sent_at == ts
    assert len(message.readings) == len(records)
    for reading, (quantity, value, unit) in zip(message.readings, records, strict=True):
        assert (reading.device_id, reading.quantity, reading.unit) == (node, quantity, unit)
        assert reading.observed_at == ts
        assert reading.clock.value == clock
        if isinstance(value, bool | str):
            assert reading.value == value
        else:
            assert reading.value == pytest.approx(value, abs=5e-5)


def test_an_unset_clock_or_a_non_finite_value_is_refused() -> None:
    with pytest.raises(ValueError, match="clock"):
        senml.envelope(1, 12345, "unsynced", "wl-0007", [senml.record("level", 1.0)])
    with pytest.raises(ValueError, match="finite"):
        senml.record("level", float("nan"))


@given(
    st.integers(1, 2**40),
    st.integers(senml.MIN_EPOCH, 2**33 - 1),
    st.lists(
        st.tuples(
            st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True),
            st.sampled_from(["succeeded", "rejected", "expired", "failed"]),
            st.one_of(st.none(), st.text(max_size=40).filter(lambda t: t.isprintable())),
            st.one_of(st.none(), st.just('{"applied":["active_s"]}')),
        ),
        max_size=5,
    ),
)
def test_node_acks_are_the_wires_acks(seq: int, ts: int, items: list[tuple[str, str, str | None, str | None]]) -> None:
    message = wire.decode_acks(senml.acks(seq, ts, items))
    assert [(a.command_id, a.status.value) for a in message.acks] == [(i[0], i[1]) for i in items]


remote_values = st.one_of(st.integers(-10, 100_000), st.floats(-10, 100, allow_nan=False), st.booleans(), st.text())
remote_keys = st.sampled_from([*config.REMOTE, "levels.observe", "levels.danger", "levels.nope", "node", "x"])


@given(st.dictionaries(remote_keys, remote_values, max_size=6))
def test_remote_changes_are_checked_key_by_key(delta: dict[str, Any]) -> None:
    cfg = dict(CFG, levels=dict(CFG["levels"]))
    problems: list[str] = []
    applied = config.apply(cfg, delta, config.REMOTE, problems)
    levels = [cfg["levels"][name] for name in stages.NAMES]
    assert levels == sorted(levels)
    assert len(set(levels)) == 5
    for key in applied:
        assert key in delta
    for key in delta:
        if key in config.REMOTE and key not in applied:
            assert cfg[key] == CFG[key]
    for key in delta:
        refused = any(problem.startswith((key + " ", key + ":")) for problem in problems)
        assert (key in applied) != refused, "applied, or refused saying why"
    assert cfg["active_s"] <= 600
    json.dumps(cfg)


def test_a_config_file_with_bad_values_keeps_the_good_ones(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    doc = {"node": "wl-1", "gateway": "gw", "sample_s": 120, "spike_m": "x", "colour": "red", "pressure": {"adc": 26}}
    path.write_text(json.dumps(doc))
    cfg, problems = config.load(str(path), {"active_s": 60})
    assert cfg["sample_s"] == 120
    assert cfg["spike_m"] == config.DEFAULTS["spike_m"]
    assert cfg["active_s"] == 60
    assert sorted(problems) == ["spike_m must be a number", "unknown key colour ignored"]
    assert (tmp_path / "node.json.good").read_bytes() == path.read_bytes()
