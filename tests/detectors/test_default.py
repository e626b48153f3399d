"""DefaultDetector: its parts one by one (level, seasonal forecast, range novelty, sustained change, rest),
cadence and gaps, validity for any finite input, the state's bound and the vectorised path.

The generic contract (round trip, batch == update, update_many == update_batch, schema, versioning)
is detectors.checks' (tests/detectors/test_checks.py runs it on every built-in detector).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors import build_detector
from detectors.base import Detector, NonFiniteValueError
from detectors.default import ALARM_REST, DAY_MS, WARMUP, DefaultDetector
from detectors.state import StateError, pack_state

MINUTE = 60_000


def _daily(n: int, step_ms: int = MINUTE, seed: int = 0, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points ``step_ms`` apart: 100 + a daily cycle of +-20 + N(0, noise)."""
    rng = np.random.default_rng(seed)
    ts = np.arange(n, dtype=np.int64) * step_ms
    return ts, 100 + 20 * np.sin(2 * np.pi * ts / DAY_MS) + rng.normal(0, noise, n)


def _alarms(det: Detector, ts: np.ndarray, values: np.ndarray) -> dict[int, dict]:
    out = det.update_batch(ts, values)
    return {int(i): json.loads(out.explanation[i]) for i in np.flatnonzero(out.is_anomaly)}


def test_registered_as_default() -> None:
    assert isinstance(build_detector("default"), DefaultDetector)


def test_warm_up_is_explicit() -> None:
    ts, values = _daily(WARMUP + 1)
    results = [DefaultDetector().update(0, 1.0)]
    det = DefaultDetector()
    results = [det.update(int(t), float(v)) for t, v in zip(ts, values, strict=True)]
    assert all(r.value_lower_limit is None and not r.is_anomaly for r in results[:WARMUP])
    assert results[WARMUP].value_lower_limit is not None


def test_a_clean_daily_cycle_is_quiet_for_days_then_a_spike_and_a_dip_alarm() -> None:
    ts, values = _daily(5 * 1440)
    assert _alarms(DefaultDetector(), ts, values) == {}
    values = values.copy()
    values[4000] += 15  # inside the range of the day, 15 noise sigmas off this minute's forecast
    values[4680] -= 15  # at the daily peak: still inside the range
    alarms = _alarms(DefaultDetector(), ts, values)
    assert set(alarms) == {4000, 4680}
    assert alarms[4000]["kind"] == "spike" and alarms[4680]["kind"] == "dip"
    assert alarms[4000]["by"] in ("level", "seasonal")


def test_the_seasonal_forecast_explains_a_fast_daily_ramp_the_level_lags() -> None:
    # a sharp morning ramp (+60 in 30 minutes) every day: the level lags it, yesterday's profile knows it
    rng = np.random.default_rng(3)
    ts = np.arange(6 * 1440, dtype=np.int64) * MINUTE
    minute_of_day = (ts % DAY_MS) // MINUTE
    values = 100 + 60 * np.clip((minute_of_day - 480) / 30, 0, 1) * (minute_of_day < 1200) + rng.normal(0, 1, len(ts))
    alarms = _alarms(DefaultDetector(), ts, values)
    assert not [i for i in alarms if ts[i] >= 2 * DAY_MS], alarms  # from day 3 on, every ramp is expected


def test_a_new_extreme_is_ranked_above_an_ordinary_deviation() -> None:
    ts, values = _daily(3 * 1440)
    det = DefaultDetector()
    det.update_batch(ts, values)
    t = int(ts[-1]) + MINUTE
    inside = DefaultDetector.from_state(det.to_state()).update(t, 100 + 20 * math.sin(2 * math.pi * t / DAY_MS) + 10)
    beyond = DefaultDetector.from_state(det.to_state()).update(t, 200.0)
    assert beyond.is_anomaly and json.loads(beyond.explanation)["kind"] == "new_range"
    assert beyond.anomaly_probability > inside.anomaly_probability


def test_a_quiet_day_is_one_alarm_though_no_value_is_extreme() -> None:
    # 5-minute points, a daily rise; on day 6 the rise fades to 40 % over two hours and stays so for
    # six: no value leaves any day's range
    ts, values = _daily(8 * 288, step_ms=300_000, seed=4, noise=0.5)
    start = 5 * DAY_MS + 4 * 3_600_000
    quiet = (ts >= start) & (ts < start + 8 * 3_600_000)
    fade = np.clip((ts[quiet] - start) / 7_200_000, 0, 1)
    values = values.copy()
    values[quiet] = 100 + (1 - 0.6 * fade) * (values[quiet] - 100)
    alarms = _alarms(DefaultDetector(), ts, values)
    assert alarms and all(quiet[i] for i in alarms), alarms  # nothing outside the quiet stretch
    assert len(alarms) <= 2 and alarms[min(alarms)]["by"] == "seasonal"


def test_an_alarm_rests_the_same_side_but_not_the_other() -> None:
    ts, values = _daily(3 * 1440)
    values = values.copy()
    values[3300:3303] += 15  # three high points in a row, inside the day's range: one alarm
    values[3315] -= 15  # a dip within the rest: its own alarm
    alarms = _alarms(DefaultDetector(), ts, values)
    assert sorted(alarms) == [3300, 3315], alarms
    assert ALARM_REST > 15


def test_a_level_shift_is_one_alarm_and_the_new_level_is_learnt() -> None:
    ts, values = _daily(5 * 1440)
    values = values.copy()
    values[3000:] += 30
    alarms = _alarms(DefaultDetector(), ts, values)
    assert list(alarms) == [3000, 3004]  # the step, then the point where the forecasts jump to it
    assert alarms[3004]["kind"] == "level_shift"


def test_a_gap_restarts_nothing_and_the_seasonal_part_works_on_gappy_minutes() -> None:
    ts, values = _daily(6 * 1440)
    keep = np.ones(len(ts), dtype=bool)
    keep[2000:2600] = False  # a ten-hour gap
    keep[np.random.default_rng(5).random(len(ts)) < 0.2] = False  # and a fifth of the minutes missing
    det = DefaultDetector()
    det.update_batch(ts[keep][:3000], values[keep][:3000])
    state = det._get_state()
    assert state["bin_ms"] == 5 * MINUTE  # per-minute points, five-minute bins
    assert np.isfinite(state["profile"]).sum() == 288 and np.isfinite(state["week"]).sum() > 288
    assert _alarms(DefaultDetector(), ts[keep], values[keep]) == {}


@pytest.mark.parametrize(("step_ms", "bin_ms"), [(1_000, 300_000), (300_000, 300_000), (3_600_000, 3_600_000),
                                                   (7 * 3_600_000, 0)])
def test_profile_bins_follow_the_cadence(step_ms: int, bin_ms: int) -> None:
    det = DefaultDetector()
    ts, values = _daily(WARMUP + 5, step_ms=step_ms)
    det.update_batch(ts, values)
    assert det._get_state()["bin_ms"] == bin_ms


def test_state_is_fixed_and_bounded() -> None:
    det = DefaultDetector()
    sizes = set()
    for k in range(3):
        ts, values = _daily(3000, seed=k)
        det.update_batch(ts + k * 3000 * MINUTE, values)
        sizes.add(len(det.to_state()))
    assert len(sizes) == 1 and sizes.pop() <= det.max_state_bytes() <= 64 * 1024


def test_an_earlier_default_state_is_refused_with_a_message() -> None:
    old = pack_state("default", 5, DefaultDetector().config, {"count": 3})
    with pytest.raises(StateError, match="earlier default detector"):
        DefaultDetector.from_state(old)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_raise_and_change_nothing(bad: float) -> None:
    det = DefaultDetector()
    ts, values = _daily(40)
    det.update_batch(ts, values)
    before = det.to_state()
    with pytest.raises(NonFiniteValueError):
        det.update(0, bad)
    with pytest.raises(NonFiniteValueError):
        det.update_batch(np.arange(3), np.array([1.0, bad, 2.0]))
    assert det.to_state() == before


EXTREMES = [1.7976931348623157e308, -1.7976931348623157e308, 1e308, -1e308, 1e154, 5e-324, 0.0, -0.0]
finite = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(EXTREMES))


@settings(max_examples=40, deadline=None)
@given(st.lists(finite, min_size=WARMUP + 5, max_size=WARMUP + 80), st.integers(0, WARMUP + 80),
       st.sampled_from([1, MINUTE, 300_000, 3_600_000]))
def test_any_finite_sequence_gives_valid_results(values: list[float], cut: int, step: int) -> None:
    det, twin = DefaultDetector(), DefaultDetector()
    out = []
    for i, v in enumerate(values):
        if i == cut:
            det = DefaultDetector.from_state(det.to_state())
        out.append(det.update(i * step, v))
    batch = twin.update_batch(np.arange(len(values), dtype=np.int64) * step, np.array(values))
    assert twin.to_state() == det.to_state()
    for k, r in enumerate(out):
        assert 0.0 <= r.anomaly_probability < 1.0
        assert r.is_anomaly == (r.anomaly_probability >= det.config["threshold"])
        assert (r.value_lower_limit is None) == (k < WARMUP)
        if r.value_lower_limit is not None:
            assert math.isfinite(r.value_lower_limit) and math.isfinite(r.value_upper_limit)
            assert r.value_lower_limit <= r.value_upper_limit
        assert batch.anomaly_probability[k] == r.anomaly_probability and batch.is_anomaly[k] == r.is_anomaly


def test_update_many_equals_update_batch_per_series() -> None:
    series = [_daily(n, step_ms=step, seed=n) for n, step in ((3000, MINUTE), (500, 300_000), (10, MINUTE))]
    states: list[bytes | None] = []
    expected = []
    for k, (ts, values) in enumerate(series):  # the first series restored mid-way, the others fresh
        det = DefaultDetector()
        if k == 0:
            det.update_batch(ts[:1000], values[:1000])
            states.append(det.to_state())
            expected.append(det.update_batch(ts[1000:], values[1000:]).anomaly_probability)
            series[0] = (ts[1000:], values[1000:])
        else:
            states.append(None)
            expected.append(det.update_batch(ts, values).anomaly_probability)
    offsets = np.cumsum([0] + [len(v) for _, v in series])
    new_states, batch = DefaultDetector.update_many(
        states, np.concatenate([t for t, _ in series]), np.concatenate([v for _, v in series]), offsets
    )
    assert np.array_equal(batch.anomaly_probability, np.concatenate(expected))
    assert len(new_states) == 3 and all(isinstance(s, bytes) for s in new_states)
