"""The per-bucket step alone, without Spark: one application per bucket (the anchor) against 32 buckets.

    .venv/bin/python bench/step_profile.py                      # 1,000 and 100,000 applications, avg and none
    .venv/bin/python bench/step_profile.py --apps 1000 --events-per-app 20 --cases none --profile bucketed  # + cProfile
    .venv/bin/python bench/step_profile.py --breakdown default,ema --step-ms 300000 --events-per-app 20 \
        --breakdown-only                 # where a detector's cost per application goes, EMA beside it
    .venv/bin/python bench/step_profile.py --detector default --apps 200 --events-per-app 20 --step-ms 300000 \
        --warm-batches 130 --cases none --skip-anchor   # the step with default, every part of it active

What it runs, per case (``avg``: 10 s windows, EMA + Robust; ``none``: EMA), with
the detectors and buckets the job uses by default (32 buckets, EMA and Robust
at their default parameters, a 2 s watermark delay):

* the input of ``bench/throughput.py``: application ``i`` gets one event every
  500 ms of event time (value ``100 + 10 sin(i / 997) + noise``), produced in
  event-time order; cut into micro-batches of ``--events-per-app`` events per
  application (the job's 500,000 offsets per batch are 500 events per
  application at 1,000 applications and 5 at 100,000);
* each batch, for each of the 32 buckets, what the operator does on a worker:
  decode the bucket's state from bytes, step it at the batch's watermark (the
  previous batch's largest event time minus 2 s, as Spark's watermark lags one
  batch), encode the state back, build the output columns;
* the same batches through the job's step (jobs/stateful_step.py) twice, in
  this process: with one application per bucket (the anchor: what a
  per-application operator pays, a state decode, step and encode per
  application and batch) and with the job's 32 buckets; the output rows are
  compared (count and an order-independent checksum), and the table prints
  CPU seconds, events/s and µs per application per batch of each, the
  speed-up of bucketing, and the bytes of the encoded states per application
  after the last batch.

``--detector NAME`` scores every case with that detector alone; ``--step-ms`` sets
the event time between an application's events (a detector's seasonal parts
want minutes, not the 500 ms above); ``--warm-batches N`` steps N batches
before the timed ones, untimed, so that parts that join late are active.

``--breakdown default,ema`` prints where each detector's cost per application
per batch goes, as the step pays it when a detector has no multi-series path
(``update_many`` falls back to one application at a time): ``--breakdown-apps``
applications, each with a state after ``--breakdown-warm`` points of a daily
sine + noise every ``--step-ms``, score ``--events-per-app`` (the first) more
points; rows: the bucket state's decode + encode of the blobs, ``from_state``
split into parsing the blob, constructing the detector and the rest
(``_set_state``), ``update_batch`` split into the call with no points (the
per-call overhead) and the points (the math), ``to_state`` split into
``_get_state`` and packing; then ``update_many`` on the same input (what the
step calls; EMA's and Robust's are vectorised across applications) and the
state bytes. ``--breakdown-profile N`` adds a cProfile of each detector's loop.

Timings are process CPU time (``time.process_time``), so other load on a
shared machine moves them less than wall time would. Not run in CI.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import pstats
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detectors import get_detector_class
from detectors.params import ParamError
from detectors.state import unpack_state
from jobs import stateful_step

BUCKETS = 32
WATERMARK_DELAY_MS = 2_000
EVENT_EVERY_MS = 500


@dataclass(frozen=True)
class Case:
    agg_function: str
    apps: int
    events_per_app: int
    batches: int
    detector: str | None = None  # None: the job's EMA (+ Robust for avg)
    step_ms: int = EVENT_EVERY_MS
    warm_batches: int = 0  # stepped before the timed batches, not timed

    @property
    def name(self) -> str:
        what = f" + {self.detector}" if self.detector else ""
        warm = f" after {self.warm_batches * self.events_per_app:,} ev/app" if self.warm_batches else ""
        return f"{self.agg_function}{what} {self.apps:,} apps x {self.events_per_app} ev/batch{warm}"


def detectors_for(agg_function: str, detector: str | None = None) -> tuple[tuple[str, type, dict], ...]:
    labels: tuple[str, ...] = ("ema", "robust") if agg_function == "avg" else ("ema",)
    if detector is not None:
        labels = (detector,)
    return tuple((label, get_detector_class(label), {}) for label in labels)


def make_batches(case: Case, buckets: int, seed: int = 7) -> list[tuple[list[dict[str, np.ndarray] | None], int]]:
    """Per batch: the events of each bucket (None: no events) and the batch's watermark.

    ``buckets == case.apps`` puts application ``i`` alone in bucket ``i``; otherwise
    applications are hashed into ``buckets`` buckets.
    """
    rng = np.random.default_rng(seed)
    names = np.array([f"app-{i:06d}" for i in range(case.apps)], dtype=object)
    if buckets == case.apps:
        bucket_of = np.arange(case.apps)
    else:
        bucket_of = np.array([zlib.crc32(n.encode()) % buckets for n in names])
    out = []
    max_ts = None
    offset = 0
    for b in range(case.warm_batches + case.batches):
        k = case.events_per_app
        ticks = np.arange(b * k, (b + 1) * k, dtype=np.int64)
        # round-robin over applications, in event-time order
        apps = np.tile(np.arange(case.apps), k)
        ts = np.repeat(1_700_000_000_000 + ticks * case.step_ms, case.apps)
        ids = np.arange(offset, offset + len(ts))
        values = np.round(100 + 10 * np.sin(ids / 997.0) + rng.random(len(ts)) * 5, 3)
        watermark = -(2**63) if max_ts is None else max_ts - WATERMARK_DELAY_MS
        per_bucket: list[dict[str, np.ndarray] | None] = [None] * buckets
        order = np.argsort(bucket_of[apps], kind="stable")
        bucket_ids, first = np.unique(bucket_of[apps][order], return_index=True)
        for bucket, sel in zip(bucket_ids.tolist(), np.split(order, first[1:]), strict=True):
            per_bucket[bucket] = {
                "application": names[apps[sel]],
                "ts_ms": ts[sel],
                "value": values[sel],
                "src_topic": np.full(len(sel), "bench", dtype=object),
                "src_partition": (sel % 4).astype(np.int32),
                "src_offset": ids[sel],
            }
        out.append((per_bucket, watermark))
        max_ts = int(ts.max())
        offset += len(ts)
    return out


def run(case: Case, batches: list) -> tuple[float, int, str, float]:
    """CPU seconds of stepping every batch of every bucket, output rows, checksum of the outputs
    (independent of the bucketing), state bytes per application at the end."""
    # idle timeout: an hour, or two events' spacing if longer (no application is evicted between its events)
    settings = stateful_step.StepSettings(case.agg_function, 10_000 if case.agg_function == "avg" else 0,
                                          detectors_for(case.agg_function, case.detector),
                                          max(3_600_000, 2 * case.step_ms), True)
    stored: dict[int, bytes] = {}
    keys: list[tuple] = []
    cpu = 0.0
    for b, (per_bucket, watermark) in enumerate(batches):
        timed = b >= case.warm_batches
        for bucket, events in enumerate(per_bucket):
            if events is None and bucket not in stored:
                continue
            t0 = time.process_time()
            state = (stateful_step.BucketState.decode(stored[bucket]) if bucket in stored
                     else stateful_step.BucketState.empty())
            out = stateful_step.step_bucket(state, events if events is not None else stateful_step.empty_events(),
                                            watermark, settings)
            if len(state):
                stored[bucket] = state.encode()
            columns = out.columns(settings.agg_function, settings.window_ms)
            cpu += time.process_time() - t0 if timed else 0.0
            keys.extend(zip(columns["application"].tolist(), columns["ts_ms"].tolist(),
                            columns["detector"].tolist(), columns["agg_value"].tolist(),
                            columns["anomaly_probability"].tolist(), columns["value_upper_limit"].tolist(),
                            columns["reason"].tolist(), strict=True))
    digest = hashlib.sha1(repr(sorted(keys, key=repr)).encode()).hexdigest()[:12]
    return cpu, len(keys), digest, sum(map(len, stored.values())) / case.apps


def profile(fn: Callable[[], object], top: int) -> None:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


# -- where one application's detector cost goes ---------------------------------------------
BREAKDOWN_PARTS = (
    ("bucket", "bucket state: its blobs out of and back into the bucket's bytes (decode + encode)"),
    ("unpack", "from_state: parse the blob (unpack_state)"),
    ("construct", "from_state: construct the detector (cls(**params): validation, buffers)"),
    ("restore", "from_state: the rest (header checks, _set_state)"),
    ("call", "update_batch with no points (the per-call overhead)"),
    ("math", "update_batch: the points (the math), less the per-call overhead"),
    ("get_state", "to_state: _get_state (the fields)"),
    ("pack", "to_state: pack_state (fields to bytes)"),
)
DISTINCT_SERIES = 16  # warmed series, cloned round robin over the applications


@dataclass(frozen=True)
class Breakdown:
    label: str
    us: dict[str, float]  # part (or "loop", "update_many") -> µs per application per batch
    state_bytes: float


def warm_states(cls: type, apps: int, points: int, step_ms: int, seed: int = 11) -> list[bytes]:
    """One state per application after ``points`` points of its own (``DISTINCT_SERIES`` distinct series,
    each a daily sine + noise at ``step_ms``, cloned round robin: the cost of a state is in its size, not
    in which series made it)."""
    rng = np.random.default_rng(seed)
    ts = 1_700_000_000_000 + np.arange(points, dtype=np.int64) * step_ms
    day = max(1, 86_400_000 // step_ms)
    blobs = []
    for _ in range(min(apps, DISTINCT_SERIES)):
        values = 100 + 10 * np.sin(2 * np.pi * np.arange(points) / day) + rng.random(points) * 5
        detector = cls()
        detector.update_batch(ts, values)
        blobs.append(detector.to_state())
    return [blobs[i % len(blobs)] for i in range(apps)]


def _cpu_per_app(fn: Callable[[], object], apps: int, repeat: int) -> float:
    """Best-of-``repeat`` process CPU µs of ``fn`` divided by ``apps``."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return 1e6 * best / apps


def breakdown(label: str, blobs: list[bytes], k: int, start_ts: int, step_ms: int, repeat: int) -> Breakdown:
    """CPU per application of each part of scoring ``k`` points of every application (state blobs
    ``blobs``) the way a per-application detector is scored in the step, and of ``update_many`` (the step's
    call; vectorised across applications for EMA and Robust) on the same input."""
    cls, apps = get_detector_class(label), len(blobs)
    rng = np.random.default_rng(5)
    ts = np.tile(start_ts + np.arange(k, dtype=np.int64) * step_ms, apps)
    values = 100 + rng.random(apps * k) * 5
    offsets = np.arange(apps + 1) * k
    none_ts, none_values = np.zeros(0, dtype=np.int64), np.zeros(0)
    bucket = stateful_step.BucketState.empty("none")
    bucket.add_all([f"app-{i:06d}" for i in range(apps)])
    bucket.detectors[label] = list(blobs)
    encoded = bucket.encode()
    fresh = [cls.from_state(b) for b in blobs]
    us = {
        "bucket": _cpu_per_app(lambda: stateful_step.BucketState.decode(encoded).encode(), apps, repeat),
        "unpack": _cpu_per_app(lambda: [unpack_state(b, label) for b in blobs], apps, repeat),
        "construct": _cpu_per_app(lambda: [cls() for _ in blobs], apps, repeat),
        "from_state": _cpu_per_app(lambda: [cls.from_state(b) for b in blobs], apps, repeat),
        "call": _cpu_per_app(lambda: [d.update_batch(none_ts, none_values) for d in fresh], apps, repeat),
        "get_state": _cpu_per_app(lambda: [d._get_state() for d in fresh], apps, repeat),
        "to_state": _cpu_per_app(lambda: [d.to_state() for d in fresh], apps, repeat),
    }
    best = float("inf")
    for _ in range(repeat):  # update_batch changes the detector: a fresh one each time, restored untimed
        detectors = [cls.from_state(b) for b in blobs]
        t0 = time.process_time()
        for i, d in enumerate(detectors):
            d.update_batch(ts[offsets[i] : offsets[i + 1]], values[offsets[i] : offsets[i + 1]])
        best = min(best, time.process_time() - t0)
    us["restore"] = us["from_state"] - us["unpack"] - us["construct"]
    us["math"] = 1e6 * best / apps - us["call"]
    us["pack"] = us.pop("to_state") - us["get_state"]
    del us["from_state"]
    us["loop"] = sum(us[part] for part, _ in BREAKDOWN_PARTS)
    us["update_many"] = _cpu_per_app(lambda: cls.update_many(list(blobs), ts, values, offsets), apps, repeat)
    return Breakdown(label, us, sum(map(len, blobs)) / apps)


def breakdown_table(rows: list[Breakdown], k: int) -> str:
    """Per part, µs per application per batch of ``k`` points and its share of the loop, one column pair
    per detector."""
    head = " | ".join(f"{r.label} µs | {r.label} share" for r in rows)
    lines = [f"| part ({k} points per application per batch) | {head} |", "|---" + "|---:|---:" * len(rows) + "|"]
    for part, text in BREAKDOWN_PARTS:
        cells = " | ".join(f"{r.us[part]:,.1f} | {100 * r.us[part] / r.us['loop']:.0f} %" for r in rows)
        lines.append(f"| {text} | {cells} |")
    lines.append("| **the parts together (one application at a time)** | "
                 + " | ".join(f"**{r.us['loop']:,.1f}** | 100 %" for r in rows) + " |")
    lines.append("| update_many, the step's call (blob in, blob out) | "
                 + " | ".join(f"{r.us['update_many']:,.1f} | {100 * r.us['update_many'] / r.us['loop']:.0f} %"
                              for r in rows) + " |")
    lines.append("| state bytes per application | " + " | ".join(f"{r.state_bytes:,.0f} | " for r in rows) + " |")
    return "\n".join(lines)


def _loop_once(label: str, blobs: list[bytes], k: int, start_ts: int, step_ms: int) -> None:
    """from_state + update_batch(k points) + to_state for every application: what the profile looks at."""
    cls = get_detector_class(label)
    ts = start_ts + np.arange(k, dtype=np.int64) * step_ms
    values = 100 + np.random.default_rng(5).random(k) * 5
    for blob in blobs:
        detector = cls.from_state(blob)
        detector.update_batch(ts, values)
        detector.to_state()


def print_breakdown(labels: list[str], apps: int, warm_points: int, k: int, step_ms: int, repeat: int,
                    top: int = 0) -> None:
    rows = []
    start_ts = 1_700_000_000_000 + warm_points * step_ms
    for label in labels:
        blobs = warm_states(get_detector_class(label), apps, warm_points, step_ms)
        rows.append(breakdown(label, blobs, k, start_ts, step_ms, repeat))
        if top:
            print(f"\ncProfile of {label}: from_state, update_batch of {k} points, to_state, per application")
            profile(lambda blobs=blobs, label=label: _loop_once(label, blobs, k, start_ts, step_ms), top)
    print(f"\nwhere a detector's cost per application goes: {apps:,} applications, each after {warm_points:,} "
          f"points every {step_ms / 1000:g} s ({DISTINCT_SERIES} distinct warmed series), then {k} points each; "
          f"process CPU, best of {repeat}")
    print(breakdown_table(rows, k))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--apps", default="1000,100000", help="application counts, comma-separated")
    parser.add_argument("--events-per-app", default="20,5",
                        help="events per application per batch, one per application count")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--cases", default="avg,none")
    parser.add_argument("--detector", help="score with this detector alone (default: EMA, + Robust for avg)")
    parser.add_argument("--step-ms", type=int, default=EVENT_EVERY_MS,
                        help=f"event time between an application's events (default {EVENT_EVERY_MS})")
    parser.add_argument("--warm-batches", type=int, default=0,
                        help="batches stepped before the timed ones, not timed (a detector's later parts active)")
    parser.add_argument("--profile", choices=("per-app", "bucketed"), help="print a cProfile of that run (first case)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--skip-anchor", "--skip-old", dest="skip_anchor", action="store_true",
                        help="time the bucketed step only (no per-application anchor, no ratio)")
    parser.add_argument("--breakdown", metavar="DETECTORS",
                        help="comma list (e.g. default,ema): where each one's cost per application goes, a table")
    parser.add_argument("--breakdown-apps", type=int, default=200, help="applications of the breakdown (200)")
    parser.add_argument("--breakdown-warm", type=int, default=2_600,
                        help="points per application before the breakdown's batch (2,600: nine days of 5 minutes)")
    parser.add_argument("--breakdown-only", action="store_true", help="the breakdown table alone, no step cases")
    parser.add_argument("--repeat", type=int, default=3, help="breakdown: best of this many runs (3)")
    parser.add_argument("--breakdown-profile", type=int, default=0, metavar="N",
                        help="also print the N functions taking most time of each detector's loop (cProfile)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.step_ms < 1 or args.warm_batches < 0 or args.repeat < 1 or args.breakdown_apps < 1:
        parser.error("--step-ms, --repeat and --breakdown-apps must be >= 1, --warm-batches >= 0")
    apps = [int(a) for a in args.apps.split(",")]
    per_app = [int(e) for e in args.events_per_app.split(",")]
    per_app = (per_app * len(apps))[: len(apps)] if len(per_app) == 1 else per_app
    breakdown_labels = [d for d in (args.breakdown or "").split(",") if d]
    for label in [args.detector, *breakdown_labels]:
        try:
            if label is not None:
                get_detector_class(label, field="--detector")
        except ParamError as err:  # an unknown name: the error lists the available ones
            parser.error(str(err))
    if breakdown_labels:
        print_breakdown(breakdown_labels, args.breakdown_apps, args.breakdown_warm, per_app[0], args.step_ms,
                        args.repeat, args.breakdown_profile)
        if args.breakdown_only:
            return 0
        print()
    cases = [Case(f, a, e, args.batches, args.detector, args.step_ms, args.warm_batches)
             for f in args.cases.split(",") for a, e in zip(apps, per_app, strict=True)]
    print(f"buckets {BUCKETS}, batches {args.batches} timed, events {args.step_ms / 1000:g} s apart, "
          f"watermark delay {WATERMARK_DELAY_MS} ms; "
          "CPU seconds of decode + step + encode + output columns over all batches and buckets")
    print("| case | events | per-app s (anchor) | bucketed s | per-app ev/s | bucketed ev/s | per-app µs/app/batch "
          "| bucketed µs/app/batch | speed-up | same output | state B/app per-app/bucketed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for i, case in enumerate(cases):
        bucketed = make_batches(case, BUCKETS)
        events = case.apps * case.events_per_app * case.batches  # timed ones
        app_batches = case.apps * case.batches
        if args.profile and i == 0:
            batches = bucketed if args.profile == "bucketed" else make_batches(case, case.apps)
            profile(lambda case=case, batches=batches: run(case, batches), args.top)
        new_s, new_rows, new_sum, new_bytes = run(case, bucketed)
        if args.skip_anchor:
            print(f"| {case.name} | {events:,} | - | {new_s:.2f} | - | {events / new_s:,.0f} | - | "
                  f"{1e6 * new_s / app_batches:.1f} | - | - | - / {new_bytes:,.0f} |")
            continue
        old_s, old_rows, old_sum, old_bytes = run(case, make_batches(case, case.apps))
        same = "yes" if (old_rows, old_sum) == (new_rows, new_sum) else f"NO ({old_rows} vs {new_rows} rows)"
        print(f"| {case.name} | {events:,} | {old_s:.2f} | {new_s:.2f} | {events / old_s:,.0f} | "
              f"{events / new_s:,.0f} | {1e6 * old_s / app_batches:.1f} | {1e6 * new_s / app_batches:.1f} | "
              f"{old_s / new_s:.2f}x | {same} | {old_bytes:,.0f} / {new_bytes:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
