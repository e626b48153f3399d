"""The incident state machine and its configuration, pure (no Spark)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from incidents import (
    Feedback,
    IncidentConfigError,
    IncidentState,
    Scored,
    StreamKey,
    incident_id,
    parse_settings,
    process,
)
from incidents.machine import RECORD_FIELDS

MIN = 60_000
STREAM = StreamKey("avg", MIN)
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z, a Monday


def scored(flags, probs=None, app="a", det="default", start=T0, explanation=None) -> Scored:
    n = len(flags)
    probs = probs if probs is not None else [0.9999 if f else 0.5 for f in flags]
    return Scored(
        names=[app], labels=[det], app=np.zeros(n, dtype=np.int64), det=np.zeros(n, dtype=np.int64),
        ts_ms=start + MIN * np.arange(n, dtype=np.int64), value=np.arange(n, dtype=np.float64),
        lower=np.zeros(n), upper=np.ones(n), probability=np.array(probs, dtype=float),
        is_anomaly=np.array(flags, dtype=bool), explanation=np.array([explanation if f else None for f in flags],
                                                                     dtype=object),
    )


def run(flags, settings=None, chunks=1, **kw):
    settings = settings or parse_settings({"resolve_after": 3})
    state = IncidentState.for_settings(settings)
    s = scored(flags, **kw)
    records = []
    bounds = np.linspace(0, len(flags), chunks + 1).astype(int)
    for a, b in itertools.pairwise(bounds):
        part = Scored(s.names, s.labels, *(getattr(s, f)[a:b] for f in
                      ("app", "det", "ts_ms", "value", "lower", "upper", "probability", "is_anomaly", "explanation")))
        out = process(state, settings, STREAM, part, int(part.ts_ms[-1]) if b > a else T0)
        records += out.records
        state = IncidentState.decode(state.encode())  # between micro-batches, as the job does
    return records, state


def transitions(records):
    return [r["transition"] for r in records]


def test_one_spike_opens_once_and_resolves_after_m_clean_windows():
    records, _ = run([0, 0, 1, 0, 0, 0, 0])
    assert transitions(records) == ["opened", "resolved"]
    opened, resolved = records
    assert list(opened) == list(RECORD_FIELDS)
    assert opened["incident_id"] == incident_id("a", "default", "avg", MIN, T0 + 2 * MIN) == resolved["incident_id"]
    assert [r["seq"] for r in records] == [1, 2]
    assert opened["opened_at"] == "2024-01-01T00:02:00.000Z" and opened["state"] == "open"
    assert resolved["resolved_at"] == "2024-01-01T00:05:00.000Z" and resolved["resolution"] == "clean"
    assert resolved["state"] == "resolved" and resolved["window_count"] == 1


def test_a_level_shift_is_one_incident_updated_only_when_it_gets_worse():
    probs = [0.5] * 2 + [0.9991] * 5 + [0.999999] + [0.9991] * 3 + [0.5] * 3
    flags = [p > 0.99 for p in probs]
    records, _ = run(flags, probs=probs)
    assert transitions(records) == ["opened", "updated", "resolved"]
    assert records[0]["severity"] == "warning" and records[1]["severity"] == "critical"
    assert records[-1]["window_count"] == 9 and records[-1]["peak_probability"] == 0.999999


def test_explanation_kind_raises_severity():
    records, _ = run([1, 0, 0, 0], probs=[0.9991, 0.5, 0.5, 0.5], explanation='{"kind": "level_shift"}')
    assert records[0]["severity"] == "critical" and records[0]["explanation"] == '{"kind": "level_shift"}'


def test_reopen_within_merge_gap_then_flapping_then_a_new_incident_after_the_gap():
    settings = parse_settings({"resolve_after": 1, "merge_gap_millis": 5 * MIN, "flapping_reopens": 2})
    records, _ = run([1, 0, 1, 0, 1, 0, 1, 0] + [0] * 70 + [1], settings=settings)
    assert transitions(records)[:7] == ["opened", "resolved", "reopened", "resolved", "reopened", "resolved",
                                        "flapping"]
    ids = {r["incident_id"] for r in records[:-1]}
    assert len(ids) == 1
    assert records[-1]["transition"] == "opened" and records[-1]["incident_id"] not in ids
    # a clean resolve says until when it can reopen (resolved + merge gap): the notifier keeps its alert firing
    assert records[1]["reopen_until"] == "2024-01-01T00:06:00.000Z" and records[1]["resolved_at"].endswith("01:00.000Z")
    assert all(r["reopen_until"] is None for r in records if r["state"] != "resolved")


def test_split_at_max_duration():
    settings = parse_settings({"max_duration_millis": 3 * MIN})
    records, _ = run([1, 1, 1, 1, 1], settings=settings)
    assert transitions(records) == ["opened", "split", "opened"]
    assert records[1]["resolution"] == "max_duration" and records[1]["state"] == "resolved"
    assert records[1]["reopen_until"] is None  # a split never reopens
    assert records[0]["incident_id"] == records[1]["incident_id"] != records[2]["incident_id"]


def test_k_of_n():
    settings = parse_settings({"open_k": 2, "open_n": 3, "resolve_after": 3})
    assert transitions(run([1, 0, 0, 1, 0, 0, 0], settings=settings)[0]) == []
    records, _ = run([1, 0, 1, 0, 0, 0], settings=settings)
    assert transitions(records) == ["opened", "resolved"] and records[0]["event_ts"] == "2024-01-01T00:02:00.000Z"


def test_no_data_when_the_watermark_passes_and_back_when_windows_come():
    settings = parse_settings({"resolve_after": 3, "no_data_after_millis": 10 * MIN})
    state = IncidentState.for_settings(settings)
    out = process(state, settings, STREAM, scored([1]), T0 + 5 * MIN)
    assert transitions(out.records) == ["opened"]
    out = process(state, settings, STREAM, None, T0 + 10 * MIN - 1)
    assert out.records == []
    out = process(state, settings, STREAM, None, T0 + 10 * MIN)
    assert transitions(out.records) == ["no_data"] and out.records[0]["state"] == "no_data"
    assert out.records[0]["event_ts"] == "2024-01-01T00:10:00.000Z"
    out = process(state, settings, STREAM, scored([0, 0, 0], start=T0 + 20 * MIN), T0 + 22 * MIN)
    assert transitions(out.records) == ["updated", "resolved"]


def test_maintenance_one_off_and_recurring_in_a_time_zone():
    settings = parse_settings({
        "resolve_after": 1,
        "maintenance": [
            {"name": "deploy", "applications": "a*", "from": "2024-01-01T00:00:00Z", "to": "2024-01-01T00:02:00Z"},
            # 01:05-01:10 Berlin = 00:05-00:10 UTC in January
            {"name": "nightly", "applications": "*", "weekdays": ["mon"], "start": "01:05", "end": "01:10",
             "timezone": "Europe/Berlin"},
        ],
    })
    flags = [1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 0, 1]
    records, _ = run(flags, settings=settings)
    assert [(r["transition"], r["event_ts"][11:16]) for r in records] == [("opened", "00:11"), ]
    # the one-off window is for a* only
    assert run(flags, settings=settings, app="other")[0][0]["event_ts"] == "2024-01-01T00:00:00.000Z"


def test_recurring_window_crossing_midnight():
    (window,) = parse_settings({"maintenance": [{"weekdays": ["sun"], "start": "23:00", "end": "01:00"}]}).maintenance
    sunday_2330 = T0 - 30 * MIN  # 2023-12-31 is a Sunday
    monday_0030, monday_0130 = T0 + 30 * MIN, T0 + 90 * MIN
    assert window.contains(np.array([sunday_2330, monday_0030, monday_0130])).tolist() == [True, True, False]


def test_feedback_resolves_mutes_resets_and_rejects_unknown():
    settings = parse_settings({"resolve_after": 2})
    state = IncidentState.for_settings(settings)
    out = process(state, settings, STREAM, scored([1, 1]), T0)
    iid = out.records[0]["incident_id"]
    fb = [Feedback("a", iid, "true_positive", T0 + 2 * MIN), Feedback("a", iid, "false_positive", T0 + 2 * MIN),
          Feedback("a", "0" * 32, "expected", T0), Feedback("zzz", iid, "expected", T0)]
    out = process(state, settings, STREAM, scored([1, 0, 1, 0, 0, 1], start=T0 + 2 * MIN), T0, feedback=fb)
    assert [(r["transition"], r["feedback"], r["resolution"]) for r in out.records] == [
        ("feedback", "true_positive", None), ("resolved", "false_positive", "false_positive"),
        # muted until 2 clean windows in a row, then a new incident
        ("opened", None, None),
    ]
    assert out.records[1]["reopen_until"] is None  # resolved by feedback: muted, it does not reopen
    assert [(k, reason) for k, reason, _ in out.rejected] == [(2, "unknown_incident"), (3, "unknown_incident")]
    new = out.records[-1]["incident_id"]
    out = process(state, settings, STREAM, None, T0, feedback=[Feedback("a", new, "new_normal", T0 + 9 * MIN)])
    assert out.reset_applications == ["a"] and out.records[0]["resolution"] == "new_normal"


def test_state_round_trip_between_batches_changes_nothing():
    rng = np.random.default_rng(3)
    flags = (rng.random(1000) < 0.15).tolist()
    probs = np.where(flags, 0.999 + 0.000999 * rng.random(1000), 0.3).tolist()
    settings = parse_settings({"open_k": 2, "open_n": 4, "resolve_after": 3, "merge_gap_millis": 10 * MIN})
    whole, state = run(flags, settings=settings, probs=probs)
    chunked, state2 = run(flags, settings=settings, probs=probs, chunks=9)
    assert whole == chunked and len(whole) > 10
    assert state.encode() == state2.encode()


def test_clean_windows_without_incidents_keep_no_state():
    settings = parse_settings({})
    state = IncidentState.for_settings(settings)
    n = 5000
    s = Scored([f"app{i}" for i in range(50)], ["default"], np.repeat(np.arange(50), 100), np.zeros(n, dtype=int),
               T0 + MIN * np.tile(np.arange(100), 50), np.zeros(n), np.zeros(n), np.ones(n), np.full(n, 0.5),
               np.zeros(n, dtype=bool), np.full(n, None, dtype=object))
    assert process(state, settings, STREAM, s, T0).records == [] and len(state) == 0


def test_resolved_tracks_are_forgotten_after_retention():
    settings = parse_settings({"resolve_after": 1, "retention_millis": 60 * MIN})
    state = IncidentState.for_settings(settings)
    process(state, settings, STREAM, scored([1, 0]), T0 + 2 * MIN)
    assert len(state) == 1
    process(state, settings, STREAM, None, T0 + 62 * MIN)
    assert len(state) == 0


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"open_k": 0}, "incidents.open_k"),
        ({"open_k": 3, "open_n": 2}, "incidents.open_k"),
        ({"bogus": 1}, "incidents.bogus"),
        ({"severity": {"escalate_kinds": ["meh"]}}, "incidents.severity.escalate_kinds"),
        ({"maintenance": [{"from": "2024-01-01T00:00:00Z", "to": "2023-01-01T00:00:00Z"}]},
         "incidents.maintenance[0].to"),
        ({"maintenance": [{"from": "2024-01-01T00:00:00"}]}, "incidents.maintenance[0].from"),
        ({"maintenance": [{"weekdays": ["mon"], "start": "25:00", "end": "01:00"}]}, "incidents.maintenance[0].start"),
        ({"maintenance": [{"weekdays": ["mon"], "start": "01:00", "end": "02:00", "timezone": "Mars/Olympus"}]},
         "incidents.maintenance[0].timezone"),
        ({"maintenance": [{"weekdays": ["mon"], "start": "01:00", "end": "02:00", "from": "x"}]},
         "incidents.maintenance[0]"),
        ({"overrides": [{"applications": "", "open_k": 1}]}, "incidents.overrides[0].applications"),
    ],
)
def test_config_errors_name_the_field(section, field):
    with pytest.raises(IncidentConfigError) as err:
        parse_settings(section, prefix="incidents.")
    assert err.value.field == field, str(err.value)
