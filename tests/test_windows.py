"""Windowing and aggregation functions (jobs/windows.py, jobs/aggregations.py), without Spark.

Every registered function has its expected values here, computed by hand on
two windows; the window oracle (tests/oracles/windows_oracle.py) must give them.
"""

from __future__ import annotations

import numpy as np
import pytest

from jobs import aggregations
from jobs.config import ConfigError, parse_config
from tests.oracles import windows_oracle as agg
from tests.test_config import config_with

W = 10_000
# events: window [0,10s) gets 1, 2, 4 (9.999 s is still inside); 10 s opens [10s,20s): 8, 16
TS = np.array([0, 3_000, 9_999, 10_000, 19_999])
VALUES = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
EXPECTED = {
    "sum": [7.0, 24.0],
    "avg": [7 / 3, 12.0],
    "count": [3.0, 2.0],
    "min": [1.0, 8.0],
    "max": [4.0, 16.0],
    # linear interpolation between closest ranks: [1,2,4] at 50% -> 2; [8,16] at 50% -> 12
    "percentile50": [2.0, 12.0],
    "percentile75": [3.0, 14.0],
    "percentile95": [3.8, 15.6],
    "percentile99": [3.96, 15.92],
    # population: [1,2,4] has mean 7/3 and squared deviations 16/9, 1/9, 25/9; [8,16] deviates by 4
    "stddev": [np.sqrt(14 / 9), 4.0],
}


def test_every_registered_function_has_expected_values_and_passes_config_validation():
    assert set(EXPECTED) | {"none"} == set(aggregations.NAMES)
    for name in aggregations.NAMES:
        window = 0 if name == "none" else W
        job = parse_config(config_with(aggregation={"agg_function": name, "agg_window_millis": window}))
        assert job.streams[0].aggregation.agg_function == name
    with pytest.raises(ConfigError, match=r"agg_function.*must be one of.*stddev"):
        parse_config(config_with(aggregation={"agg_function": "variance"}))
    with pytest.raises(ValueError, match="unknown agg_function 'variance'"):
        aggregations.get("variance")


def test_stddev_keeps_the_spread_of_large_close_values_and_one_event_has_none():
    ts = np.array([0, 1, 2, 10_000])
    values = 1e9 + np.array([0.0, 1.0, 2.0, 5.0])
    state, _ = agg.add_events(agg.WindowState.empty("stddev"), ts, values, "stddev", W)
    _, starts, out = agg.close_windows(state, 20_000, "stddev", W)
    assert starts.tolist() == [0, 10_000]
    assert out.tolist() == [np.sqrt(2 / 3), 0.0]
    # what a running sum of squares would have said: the spread is lost in the rounding
    n, s, sq = 3, values[:3].sum(), (values[:3] ** 2).sum()
    assert abs(np.sqrt(max(sq / n - (s / n) ** 2, 0.0)) - np.sqrt(2 / 3)) > 0.1


@pytest.mark.parametrize("function", sorted(EXPECTED))
def test_each_function_on_window_edges(function):
    state = agg.WindowState.empty(function)
    state, late = agg.add_events(state, TS, VALUES, function, W)
    assert not late.any()
    state, starts, values = agg.close_windows(state, 20_000, function, W)
    assert starts.tolist() == [0, 10_000]
    np.testing.assert_allclose(values, EXPECTED[function], rtol=1e-12)
    assert len(state.starts) == 0


@pytest.mark.parametrize("function", sorted(EXPECTED))
def test_split_across_batches_gives_the_same_windows(function):
    state = agg.WindowState.empty(function)
    for i in range(len(TS)):  # one event per micro-batch, out of order inside the window
        state, _ = agg.add_events(state, TS[[i]], VALUES[[i]], function, W)
    state, _, values = agg.close_windows(state, 20_000, function, W)
    np.testing.assert_allclose(values, EXPECTED[function], rtol=1e-12)


def test_window_closes_only_when_watermark_reaches_its_end():
    state, _ = agg.add_events(agg.WindowState.empty("sum"), TS, VALUES, "sum", W)
    state, starts, _ = agg.close_windows(state, 9_999, "sum", W)
    assert starts.tolist() == []
    state, starts, values = agg.close_windows(state, 10_000, "sum", W)
    assert (starts.tolist(), values.tolist()) == ([0], [7.0])
    assert agg.next_close_time(state, "sum", W) == 20_000


def test_late_events_are_returned_not_dropped():
    state, _ = agg.add_events(agg.WindowState.empty("avg"), TS, VALUES, "avg", W)
    state, _, _ = agg.close_windows(state, 10_000, "avg", W)
    state, late = agg.add_events(state, np.array([9_999, 10_000, 5]), np.array([1.0, 2.0, 3.0]), "avg", W)
    assert late.tolist() == [True, False, True]
    state, starts, values = agg.close_windows(state, 20_000, "avg", W)
    assert starts.tolist() == [10_000] and values.tolist() == [(8 + 16 + 2) / 3]


def test_none_emits_points_in_event_time_order_and_keeps_duplicates():
    ts = np.array([5, 1, 3, 3])
    state, _ = agg.add_events(agg.WindowState.empty("none"), ts, np.array([50.0, 10.0, 30.0, 31.0]), "none", 0)
    state, starts, values = agg.close_windows(state, 4, "none", 0)
    assert starts.tolist() == [1, 3, 3] and values.tolist() == [10.0, 30.0, 31.0]
    state, late = agg.add_events(state, np.array([3, 4]), np.array([0.0, 40.0]), "none", 0)
    assert late.tolist() == [True, False]
    state, starts, values = agg.close_windows(state, 100, "none", 0)
    assert starts.tolist() == [4, 5] and values.tolist() == [40.0, 50.0]


def test_empty_windows_emit_nothing_and_negative_times_align_to_the_epoch():
    state, _ = agg.add_events(agg.WindowState.empty("count"), np.array([-1, 25_000]), np.ones(2), "count", W)
    state, starts, values = agg.close_windows(state, 40_000, "count", W)
    assert starts.tolist() == [-10_000, 20_000] and values.tolist() == [1.0, 1.0]


def _add_without_duplicates(state, ts, values, function):
    state, duplicate = agg.find_duplicates(state, ts, values, function, W)
    state, _late = agg.add_events(state, ts[~duplicate], values[~duplicate], function, W)
    return state, duplicate


@pytest.mark.parametrize("function", sorted(EXPECTED))
def test_duplicates_in_a_batch_and_across_batches_are_not_counted(function):
    state = agg.WindowState.empty(function)
    # batch 1: the stream with two events sent twice (a producer retry)
    ts1, v1 = np.array([0, 3_000, 3_000, 9_999]), np.array([1.0, 2.0, 2.0, 4.0])
    state, duplicate = _add_without_duplicates(state, ts1, v1, function)
    assert duplicate.tolist() == [False, False, True, False]
    # batch 2: a repeat of a batch-1 event (its window is still open) and the rest of the stream
    ts2 = np.array([9_999, 10_000, 19_999, 10_000])
    v2 = np.array([4.0, 8.0, 16.0, 8.0])
    state, duplicate = _add_without_duplicates(state, ts2, v2, function)
    assert duplicate.tolist() == [True, False, False, True]
    _, starts, values = agg.close_windows(state, 20_000, function, W)
    assert starts.tolist() == [0, 10_000] and values.tolist() == pytest.approx(EXPECTED[function])


def test_same_time_other_value_is_not_a_duplicate_and_signed_zero_is():
    ts = np.array([5, 5, 5, 5])
    _state, duplicate = agg.find_duplicates(agg.WindowState.empty("sum"), ts, np.array([1.0, 2.0, 0.0, -0.0]), "sum", W)
    assert duplicate.tolist() == [False, False, False, True]


def test_a_duplicate_of_a_closed_window_is_late_and_the_memory_of_closed_windows_is_freed():
    state, _ = _add_without_duplicates(agg.WindowState.empty("avg"), TS, VALUES, "avg")
    assert len(state.seen_ts) == len(TS)
    state, _, _ = agg.close_windows(state, 10_000, "avg", W)
    assert state.seen_ts.tolist() == [10_000, 19_999]  # only the open window's events are remembered
    state, duplicate = agg.find_duplicates(state, np.array([0, 19_999]), np.array([1.0, 16.0]), "avg", W)
    assert duplicate.tolist() == [False, True]
    _, late = agg.add_events(state, np.array([0]), np.array([1.0]), "avg", W)
    assert late.tolist() == [True]
