"""The incident layer inside the per-bucket step (jobs/stateful_step.py), without Spark."""

from __future__ import annotations

import json

import numpy as np

from detectors import get_detector_class
from incidents import incident_id, parse_settings
from jobs.result_format import KIND_DEAD_LETTER, KIND_INCIDENT, KIND_RESULT
from jobs.stateful_step import BucketState, StepSettings, empty_events, step_bucket

WINDOW = 60_000
T0 = 1_704_067_200_000


def settings(incidents=None) -> StepSettings:
    detectors = (("ema", get_detector_class("ema"), {"window": 5, "warmup": 3}),)
    return StepSettings("avg", WINDOW, detectors, 7 * 86_400_000, True, incidents)


def batch(apps, minutes, spike=None, feedback=()) -> dict[str, np.ndarray]:
    rows = []
    for m in minutes:
        for app in apps:
            value = 100.0 + (m % 7) + (80.0 if spike and (app, m) in spike else 0.0)
            rows.append((app, T0 + m * WINDOW + 1000, value, None))
    rows += list(feedback)
    n = len(rows)
    return {
        "application": np.array([r[0] for r in rows], dtype=object),
        "ts_ms": np.array([r[1] for r in rows], dtype=np.int64),
        "value": np.array([r[2] for r in rows], dtype=np.float64),
        "detail": np.array([r[3] for r in rows], dtype=object),
        "src_topic": np.array(["t" if r[3] is None else "fb" for r in rows], dtype=object),
        "src_partition": np.zeros(n, dtype=np.int32),
        "src_offset": np.arange(n, dtype=np.int64),
    }


def run(step_settings, batches):
    blob, frames = None, []
    for events, watermark in batches:
        state = BucketState.empty() if blob is None else BucketState.decode(blob)
        out = step_bucket(state, events, watermark, step_settings)
        frames.append(out.columns("avg", WINDOW))
        blob = state.encode()
    columns = {c: np.concatenate([f[c] for f in frames]) for c in frames[0]}
    return columns, BucketState.decode(blob)


def rows(columns, kind):
    """Rows of one kind, columns in name order (ts_ms last but one); NaN as None so that rows compare."""
    which = np.flatnonzero(columns["kind"] == kind)
    return [tuple(_plain(columns[c][i]) for c in sorted(columns)) for i in which]


def _plain(x):
    return None if isinstance(x, float) and np.isnan(x) else x


APPS = [f"app{i}" for i in range(12)]
SPIKES = {("app3", 20), ("app7", 30), ("app7", 31)}


def plan():
    return [(batch(APPS, range(m, m + 5), SPIKES), T0 + m * WINDOW) for m in range(0, 60, 5)]


def test_results_are_the_same_with_incidents_on_or_off():
    off, _ = run(settings(None), plan())
    on, state = run(settings(parse_settings({"resolve_after": 3})), plan())
    assert rows(on, KIND_RESULT) == rows(off, KIND_RESULT) and len(rows(on, KIND_RESULT)) > 500
    incidents = [json.loads(d) for d in on["detail"][on["kind"] == KIND_INCIDENT]]
    assert {(r["application"], r["transition"]) for r in incidents} == {
        ("app3", "opened"), ("app3", "resolved"), ("app7", "opened"), ("app7", "resolved")}
    keys = on["kafka_key"][on["kind"] == KIND_INCIDENT]
    assert all(k.decode() == r["incident_id"] for k, r in zip(keys, incidents, strict=True))
    assert state.incident_blob  # kept in the bucket's state


def test_maintenance_freeze_keeps_points_from_the_detector():
    incidents = parse_settings({"maintenance": [{"applications": "app3", "from": "2024-01-01T00:19:00Z",
                                                 "to": "2024-01-01T00:22:00Z", "freeze_model": True}]})
    on, _ = run(settings(incidents), plan())
    results = {(a, t): (p, x) for k, a, t, p, x in zip(on["kind"], on["application"], on["ts_ms"],
                                                      on["anomaly_probability"], on["explanation"], strict=True)
               if k == KIND_RESULT}
    assert results[("app3", T0 + 20 * WINDOW)] == (0.0, '{"kind":"maintenance"}')
    assert not any(json.loads(d)["application"] == "app3" for d in on["detail"][on["kind"] == KIND_INCIDENT])
    # app3's detector saw neither the spike nor its neighbours: later results as if those minutes were missing
    without = run(settings(None), [(_drop(e, "app3", range(19, 22)), w) for e, w in plan()])[0]
    def later(columns):
        return [r for r in rows(columns, KIND_RESULT) if r[4] == "app3" and r[-3] >= T0 + 22 * WINDOW]

    assert later(on) == later(without) and later(on)


def _drop(events, app, minutes):
    keep = ~((events["application"] == app) & np.isin((events["ts_ms"] - T0) // WINDOW, list(minutes)))
    return {c: v[keep] for c, v in events.items()}


def test_feedback_in_the_step_new_normal_resets_and_unknown_is_a_dead_letter():
    incidents = parse_settings({"resolve_after": 30})
    iid = incident_id("app7", "ema", "avg", WINDOW, T0 + 30 * WINDOW)
    batches = plan()[:8]  # windows up to minute 34 closed: app7's incident is open
    fb = [("app7", T0 + 36 * WINDOW, 3.0, iid), ("app1", T0, 0.0, "f" * 32)]  # new_normal; unknown
    batches.append((batch(APPS, range(40, 45), feedback=fb), T0 + 40 * WINDOW))
    on, _ = run(settings(incidents), batches)
    records = [json.loads(d) for d in on["detail"][on["kind"] == KIND_INCIDENT]]
    assert [(r["transition"], r["resolution"]) for r in records if r["incident_id"] == iid] == [
        ("opened", None), ("resolved", "new_normal")]
    dead = on["reason"][on["kind"] == KIND_DEAD_LETTER].tolist()
    assert dead == ["unknown_incident"]
    # app7's detector started over: no band again while it warms up
    after = [(t, lo) for k, a, t, lo in zip(on["kind"], on["application"], on["ts_ms"], on["value_lower_limit"],
                                            strict=True) if k == KIND_RESULT and a == "app7" and t >= T0 + 35 * WINDOW]
    assert after and all(lo is None or np.isnan(lo) for _, lo in after[:3])


def test_empty_steps_keep_no_incident_state():
    state = BucketState.empty()
    step_bucket(state, batch(APPS, range(5)), T0, settings(parse_settings({})))
    step_bucket(state, empty_events(), T0 + 10 * WINDOW, settings(parse_settings({})))
    assert state.incident_state is None and BucketState.decode(state.encode()).incident_blob == b""


def test_no_data_when_an_application_with_an_open_incident_goes_quiet():
    incidents = parse_settings({"resolve_after": 30, "no_data_after_millis": 10 * WINDOW})
    state = BucketState.empty()
    step = settings(incidents)
    for m in range(0, 35, 5):  # app7's spike at minute 30 opens an incident
        step_bucket(state, batch(APPS, range(m, m + 5), SPIKES), T0 + m * WINDOW, step)
    # app7 stops; the others go on: the bucket is stepped, the watermark passes app7's last window + 10 min
    records = []
    for m in range(35, 60, 5):
        out = step_bucket(state, batch([a for a in APPS if a != "app7"], range(m, m + 5)), T0 + m * WINDOW, step)
        columns = out.columns("avg", WINDOW)
        records += [json.loads(d) for d in columns["detail"][columns["kind"] == KIND_INCIDENT]]
        if m == 35:  # the incident is open: app7 is due at its no_data deadline (the bucket's timer fires then)
            assert [r["transition"] for r in records] == ["opened"]
            assert state.due[state.index["app7"]] == T0 + 44 * WINDOW
    no_data = [r for r in records if r["transition"] == "no_data"]
    assert [(r["application"], r["state"], r["event_ts"]) for r in no_data] == [
        ("app7", "no_data", "2024-01-01T00:44:00.000Z")]  # last window 00:34 + 10 minutes
