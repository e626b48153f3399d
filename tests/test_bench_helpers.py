"""Pure helpers of the benchmarks (throughput.py, step_profile.py): fits, ratios, verdict, breakdown. No Spark."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from detectors import get_detector_class
from tests.bench_module import load_bench

bench = load_bench("throughput")


def test_fit_recovers_per_key_per_event_and_fixed_costs():
    rng = np.random.default_rng(1)
    keys = np.array([1_000, 1_000, 10_000, 10_000, 100_000, 100_000, 50_000, 2_000])
    events = np.array([500_000, 250_000, 500_000, 120_000, 500_000, 300_000, 400_000, 2_000])
    seconds = 20e-6 * keys + 3e-6 * events + 0.8 + rng.normal(0, 1e-4, len(keys))
    fit = bench.fit_costs(keys, events, seconds)
    assert fit.per_key_s == pytest.approx(20e-6, rel=0.01)
    assert fit.per_event_s == pytest.approx(3e-6, rel=0.01)
    assert fit.per_batch_s == pytest.approx(0.8, abs=0.01)
    assert fit.batches == 8
    assert "20.00 us per key per batch" in fit.describe()


def test_fit_folds_the_fixed_cost_into_events_when_batches_are_all_the_same_size():
    keys = np.array([1_000, 1_000, 10_000, 10_000, 100_000])
    events = np.full(5, 500_000)
    seconds = 20e-6 * keys + 3e-6 * events + 0.5
    fit = bench.fit_costs(keys, events, seconds)
    assert fit.per_batch_s is None
    assert fit.per_key_s == pytest.approx(20e-6, rel=1e-6)
    assert fit.per_event_s == pytest.approx(3e-6 + 0.5 / 500_000, rel=1e-6)
    assert "folded" in fit.describe()


def test_fit_with_too_few_batches_is_nan_not_a_number_made_up():
    fit = bench.fit_costs([1_000], [500_000], [10.0])
    assert math.isnan(fit.per_key_s) and math.isnan(fit.per_event_s)
    assert "not enough batches" in fit.describe()


def test_summary_line_is_the_exact_format():
    line = bench.summary_line(0.8149, 0.5, 0.456, 7.891)
    assert line == "throughput: avg/native=0.81 none/ingest=0.50 keys=0.46 p99_latency_s=7.89"
    assert re.fullmatch(r"throughput: avg/native=\S+ none/ingest=\S+ keys=\S+ p99_latency_s=\S+", line)
    assert bench.summary_line(float("nan"), 1, 1, float("nan")).startswith("throughput: avg/native=nan ")


def test_keys_ratio_is_the_worse_case_most_over_fewest_applications():
    events_s = {("avg", 1_000): 30_000.0, ("avg", 100_000): 24_000.0, ("none", 1_000): 40_000.0}
    events_s[("none", 100_000)] = 10_000.0
    assert bench.keys_ratio(events_s, ["avg", "none"], [1_000, 10_000, 100_000]) == pytest.approx(0.25)
    assert bench.keys_ratio(events_s, ["avg"], [1_000, 100_000]) == pytest.approx(0.8)
    assert math.isnan(bench.keys_ratio(events_s, ["avg", "none"], [1_000]))


def test_application_names_never_truncate_and_keys_per_batch():
    assert bench.app_width(1_000) == 4 and bench.app_width(100_000) == 5 and bench.app_width(1_000_001) == 7
    assert bench.keys_in_batch(100_000, 500_000) == 100_000
    assert bench.keys_in_batch(100_000, 20_000) == 20_000
    assert bench.parse_apps("100000,1000, 10000") == [1_000, 10_000, 100_000]


def test_only_at_picks_what_runs_at_an_application_count_and_names_bad_input():
    only = bench.parse_only_at(["20000=none, none-default"], [200, 2_000, 20_000])
    assert only == {20_000: {"none", "none-default"}}
    assert bench.runs_at(only, 20_000, "none-default") and not bench.runs_at(only, 20_000, "avg")
    assert not bench.runs_at(only, 20_000, "ingest") and bench.runs_at(only, 200, "avg-default")
    for bad, message in [
        ("20000", "expected APPS=NAME"),
        ("x=none", "expected APPS=NAME"),
        ("500=none", "500 is not one of --apps"),
        ("200=nonsense", "unknown nonsense"),
    ]:
        with pytest.raises(ValueError, match=message):
            bench.parse_only_at([bad], [200, 20_000])


def _row(case: str, apps: int, seconds: float, events: int = 100_000) -> object:
    row = bench.Row(case, apps, events=events, anchor=bench.ANCHOR_OF.get(case))
    row.batches = [{"batch": 0, "rows": events, "ms": seconds * 1000, "results": 0}]
    return row


def test_detector_table_compares_each_case_with_none_ema_at_its_applications_and_itself_at_the_fewest():
    rows = [
        _row("ingest", 200, 1.0),  # an anchor: not in the table
        _row("none", 200, 10.0),
        _row("none-default", 200, 40.0),
        _row("none", 20_000, 20.0),
        _row("none-default", 20_000, 160.0),
    ]
    table = bench.detector_table(rows).splitlines()
    assert len(table) == 2 + 4 and not any("ingest" in line for line in table)
    cells = {(c[1].strip(), c[2].strip()): c for c in (line.split("|") for line in table[2:])}
    default_200 = cells[("none + default", "200")]
    assert default_200[3].strip() == "2,500" and default_200[4].strip() == "0.25"
    assert default_200[5].strip() == "1.00 (at 200)"
    default_20k = cells[("none + default", "20,000")]
    assert default_20k[4].strip() == "0.12" and default_20k[5].strip() == "0.25 (at 200)"
    assert cells[("none + EMA", "20,000")][4].strip() == "1.00"


def test_step_profile_breakdown_names_every_part_and_the_state_size():
    step_profile = load_bench("step_profile")
    blobs = step_profile.warm_states(get_detector_class("ema"), 3, 40, 300_000)
    assert len(blobs) == 3 and len(set(blobs)) == 3  # three distinct warmed series
    row = step_profile.breakdown("ema", blobs, 5, 1_700_000_000_000 + 40 * 300_000, 300_000, repeat=1)
    parts = [part for part, _ in step_profile.BREAKDOWN_PARTS]
    assert set(row.us) == {*parts, "loop", "update_many"}
    assert row.us["loop"] == sum(row.us[p] for p in parts)
    assert row.state_bytes == sum(map(len, blobs)) / 3
    table = step_profile.breakdown_table([row], 5).splitlines()
    assert len(table) == 2 + len(parts) + 3 and all(line.count("|") == 4 for line in table)


def test_detector_speed_state_table_reads_every_series_of_a_corpus_gz_too(tmp_path):
    import gzip

    speed = load_bench("detector_speed")
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    lines = [f"2020-01-01 {h:02d}:{m:02d}:00,{10 + (h * 60 + m) % 7}" for h in range(3) for m in range(0, 60, 5)]
    text = "timestamp,value\n" + "\n".join(lines) + "\n"
    (data / "a" / "plain.csv").write_text(text)
    (data / "a" / "packed.csv.gz").write_bytes(gzip.compress(text.encode()))
    case = speed.Case("ema", "ema")
    row = speed.corpus_states(case, "tiny", data, jobs=1)
    assert row.error is None and set(row.sizes) == {"a/plain.csv", "a/packed.csv.gz"[: -len(".gz")]}
    detector = get_detector_class("ema")()
    detector.update_batch(np.arange(36) * 300_000, np.array([10.0 + i % 7 for i in range(36)]))
    assert set(row.sizes.values()) == {len(detector.to_state())}
    cells = [c.strip() for c in row.cells().split("|")]
    assert cells[1:8] == ["ema", "tiny", "2", f"{len(detector.to_state())} B", f"{len(detector.to_state())} B",
                          "a/packed.csv", "0"]
    table = speed.state_table((case,), {"tiny": data, "gone": tmp_path / "missing"}, jobs=1)
    assert "| ema | tiny | 2 |" in table and "not found, skipped: gone" in table


def test_incident_quality_counts_pages_windows_and_false_incidents():
    quality = load_bench("incident_quality")
    records = [
        {"incident_id": "a", "transition": "opened", "state": "open", "event_ts": "1970-01-01T00:10:00.000Z"},
        {"incident_id": "a", "transition": "updated", "state": "open", "event_ts": "1970-01-01T00:11:00.000Z"},
        {"incident_id": "a", "transition": "resolved", "state": "resolved", "event_ts": "1970-01-01T00:13:00.000Z",
         "reopen_until": "1970-01-01T00:43:00.000Z"},
        {"incident_id": "a", "transition": "reopened", "state": "open", "event_ts": "1970-01-01T00:20:00.000Z"},
        {"incident_id": "b", "transition": "opened", "state": "open", "event_ts": "1970-01-01T02:00:00.000Z"},
    ]
    # the notifier keeps a's alert firing through its merge gap: the reopen does not page (incidents/paging.py)
    notified = quality.notifications(records)
    assert notified == [(600_000, "opened"), (7_200_000, "opened")]
    # with --keep-firing-seconds 0 it does; updates and resolves never page
    assert quality.notifications(records, 0) == [(600_000, "opened"), (1_200_000, "reopened"), (7_200_000, "opened")]
    ts = np.arange(0, 3 * 3_600_000, 60_000)
    flags = np.isin(ts, [600_000, 660_000, 7_200_000])
    windows = [(300_000, 1_800_000), (9_000_000, 9_600_000)]
    f = quality.figures_of(ts, flags, quality.notifications(records, 0), records, windows)
    assert (f.windows, f.with_point, f.with_incident, f.notifications_in, f.windows_notified) == (2, 1, 1, 2, 1)
    assert (f.false_incidents, f.false_points, f.delays_min, f.pages_in) == (1, 1, (5.0,), (1, 1, 0))
    f = quality.figures_of(ts, flags, notified, records, windows)
    assert (f.with_incident, f.notifications_in, f.windows_notified, f.pages_in) == (1, 1, 1, (1, 0, 0))
