"""The per-bucket step alone, without Spark: a per-application step (old, the anchor) against the job's (new).

    .venv/bin/python bench/step_profile.py                      # 1,000 and 100,000 applications, avg and none
    .venv/bin/python bench/step_profile.py --apps 1000 --cases none --profile new   # + a cProfile of the new step

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
* the same batches through the old per-application step
  (tests/stateful_step_oracle.py, the anchor) and the new vectorised one
  (jobs/stateful_step.py), in this process, one after the other; the output
  rows are compared (count and a checksum), and the table prints CPU seconds,
  events/s and µs per application per batch of each, new/old speed-up, and
  the bytes of all buckets' encoded states per application after the last batch.

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
from types import ModuleType

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detectors import get_detector_class
from jobs import stateful_step as new_step
from tests import stateful_step_oracle as old_step

BUCKETS = 32
WATERMARK_DELAY_MS = 2_000
EVENT_EVERY_MS = 500


@dataclass(frozen=True)
class Case:
    agg_function: str
    apps: int
    events_per_app: int
    batches: int

    @property
    def name(self) -> str:
        return f"{self.agg_function} {self.apps:,} apps x {self.events_per_app} ev/batch"


def detectors_for(agg_function: str) -> tuple[tuple[str, type, dict], ...]:
    labels = ("ema", "robust") if agg_function == "avg" else ("ema",)
    return tuple((label, get_detector_class(label), {}) for label in labels)


def make_batches(case: Case, seed: int = 7) -> list[tuple[list[dict[str, np.ndarray] | None], int]]:
    """Per batch: the events of each bucket (None: no events) and the batch's watermark."""
    rng = np.random.default_rng(seed)
    names = np.array([f"app-{i:06d}" for i in range(case.apps)], dtype=object)
    bucket_of = np.array([zlib.crc32(n.encode()) % BUCKETS for n in names])
    out = []
    max_ts = None
    offset = 0
    for b in range(case.batches):
        k = case.events_per_app
        step = np.arange(b * k, (b + 1) * k, dtype=np.int64)
        # round-robin over applications, in event-time order
        apps = np.tile(np.arange(case.apps), k)
        ts = np.repeat(1_700_000_000_000 + step * EVENT_EVERY_MS, case.apps)
        ids = np.arange(offset, offset + len(ts))
        values = np.round(100 + 10 * np.sin(ids / 997.0) + rng.random(len(ts)) * 5, 3)
        watermark = -(2**63) if max_ts is None else max_ts - WATERMARK_DELAY_MS
        per_bucket: list[dict[str, np.ndarray] | None] = []
        for bucket in range(BUCKETS):
            sel = np.flatnonzero(bucket_of[apps] == bucket)
            if not len(sel):
                per_bucket.append(None)
                continue
            per_bucket.append(
                {
                    "application": names[apps[sel]],
                    "ts_ms": ts[sel],
                    "value": values[sel],
                    "src_topic": np.full(len(sel), "bench", dtype=object),
                    "src_partition": (sel % 4).astype(np.int32),
                    "src_offset": ids[sel],
                }
            )
        out.append((per_bucket, watermark))
        max_ts = int(ts.max())
        offset += len(ts)
    return out


def run(module: ModuleType, case: Case, batches: list) -> tuple[float, int, str, float]:
    """CPU seconds of stepping every batch of every bucket, output rows, checksum of the outputs,
    state bytes per application at the end."""
    settings = module.StepSettings(case.agg_function, 10_000 if case.agg_function == "avg" else 0,
                                   detectors_for(case.agg_function), 3_600_000, True)
    stored: dict[int, bytes] = {}
    digest = hashlib.sha1()
    rows = 0
    cpu = 0.0
    for per_bucket, watermark in batches:
        for bucket, events in enumerate(per_bucket):
            if events is None and bucket not in stored:
                continue
            t0 = time.process_time()
            state = module.BucketState.decode(stored[bucket]) if bucket in stored else module.BucketState.empty()
            out = module.step_bucket(state, events if events is not None else module.empty_events(), watermark,
                                     settings)
            if len(state):
                stored[bucket] = state.encode()
            columns = out.columns(settings.agg_function, settings.window_ms)
            cpu += time.process_time() - t0
            n = len(columns["kind"])
            rows += n
            if n:
                # order-independent: the rows of a bucket as a sorted list of reprs
                keys = sorted(zip(columns["application"].tolist(), columns["ts_ms"].tolist(),
                                  columns["detector"].tolist(), columns["agg_value"].tolist(),
                                  columns["anomaly_probability"].tolist(), columns["value_upper_limit"].tolist(),
                                  columns["reason"].tolist(), strict=True), key=repr)
                digest.update(repr(keys).encode())
    return cpu, rows, digest.hexdigest()[:12], sum(map(len, stored.values())) / case.apps


def profile(fn: Callable[[], object], top: int) -> None:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--apps", default="1000,100000", help="application counts, comma-separated")
    parser.add_argument("--events-per-app", default="20,5",
                        help="events per application per batch, one per application count")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--cases", default="avg,none")
    parser.add_argument("--profile", choices=("old", "new"), help="print a cProfile of that step (first case)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--skip-old", action="store_true", help="time the new step only (no anchor, no ratio)")
    args = parser.parse_args(argv)
    apps = [int(a) for a in args.apps.split(",")]
    per_app = [int(e) for e in args.events_per_app.split(",")]
    per_app = (per_app * len(apps))[: len(apps)] if len(per_app) == 1 else per_app
    cases = [Case(f, a, e, args.batches) for f in args.cases.split(",") for a, e in zip(apps, per_app, strict=True)]
    print(f"buckets {BUCKETS}, batches {args.batches}, watermark delay {WATERMARK_DELAY_MS} ms; "
          "CPU seconds of decode + step + encode + output columns over all batches and buckets")
    print("| case | events | old s (anchor) | new s | old ev/s | new ev/s | old µs/app/batch | new µs/app/batch "
          "| new/old speed | same output | state B/app old/new |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for i, case in enumerate(cases):
        batches = make_batches(case)
        events = case.apps * case.events_per_app * case.batches
        app_batches = case.apps * case.batches
        if args.profile and i == 0:
            module = old_step if args.profile == "old" else new_step
            profile(lambda module=module, case=case, batches=batches: run(module, case, batches), args.top)
        new_s, new_rows, new_sum, new_bytes = run(new_step, case, batches)
        if args.skip_old:
            print(f"| {case.name} | {events:,} | - | {new_s:.2f} | - | {events / new_s:,.0f} | - | "
                  f"{1e6 * new_s / app_batches:.1f} | - | - | - / {new_bytes:,.0f} |")
            continue
        old_s, old_rows, old_sum, old_bytes = run(old_step, case, batches)
        same = "yes" if (old_rows, old_sum) == (new_rows, new_sum) else f"NO ({old_rows} vs {new_rows} rows)"
        print(f"| {case.name} | {events:,} | {old_s:.2f} | {new_s:.2f} | {events / old_s:,.0f} | "
              f"{events / new_s:,.0f} | {1e6 * old_s / app_batches:.1f} | {1e6 * new_s / app_batches:.1f} | "
              f"{old_s / new_s:.2f}x | {same} | {old_bytes:,.0f} / {new_bytes:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
