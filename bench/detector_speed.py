"""Detector micro-benchmark (pure Python, no Spark), optionally with NAB scores.

    .venv/bin/python bench/detector_speed.py [--synthetic] [--points N] [--repeat 3] [--nab] [--nab-dir DIR]
    .venv/bin/python bench/detector_speed.py --only default --state [--no-speed] [--aiops-dir DIR] [--jobs 2]

For every built-in detector (``ema``, ``robust``, ``cad`` with NAB's settings and a
fixed range, ``cad`` with default parameters and the range learned online,
``likelihood`` over EMA, ``default``; ``ema``, the simplest, is the anchor) on NAB's
longest series (``realKnownCause/machine_temperature_system_failure``, 22,695
points; with ``--synthetic`` or without the NAB data: a seeded synthetic series of
``--points`` 5-minute points, daily sine + Gaussian noise + a few spikes), prints a
markdown table:

* points/s of ``update`` called point by point;
* points/s of one ``update_batch`` call over the whole series;
* bytes of ``to_state()`` after the series;
* time of one ``to_state()`` + ``from_state()`` round trip (median of several),
  checked to restore the same state.

Speeds are the best of ``--repeat`` runs on a fresh detector each. With ``--nab``
it also runs each detector over the NAB corpus (``DIR/data``, 31 series) through
:mod:`tools.backtest` (``--jobs 2``, a state round trip every 1,000 points, as the
backtest CLI does) and prints the NAB score per profile next to NAB's published
numenta and contextOSE results (scored from ``DIR/reference_results`` with the
same scorer). The fixed-range CAD gets each series' own min/max there (NAB's
setting; a look-ahead a stream cannot have). Without the NAB data the NAB part is
skipped with a message.

With ``--state`` it runs each detector over every series of every corpus
(NAB's ``--nab-dir``/data, the AIOps KPIs' ``--aiops-dir``/data, ``*.csv.gz``
read as the backtest reads them; ``--jobs`` series in parallel) and prints, per
corpus, the median and the largest ``len(to_state())`` after the whole series
(the state one application keeps in the job), the series of the largest, and
the detector's declared ``max_state_bytes()``. A corpus whose folder is missing
is skipped with a message.

A detector that fails to import or run gets an ``error`` row instead of stopping
the benchmark.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from detectors.registry import build_detector, detector_from_state  # noqa: E402
from evaluation import nab_scoring  # noqa: E402
from tools import backtest as bt  # noqa: E402

STEP_MS = 300_000  # 5-minute points, like most NAB series
DAY = 288  # points per day
SEED = 20240601
NAB_JOBS = 2
PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
STATE_BUDGET = 64 * 1024  # bytes of state per application a detector should stay within
LONGEST = "realKnownCause/machine_temperature_system_failure.csv"  # NAB's longest series (22,695 points)


@dataclass(frozen=True)
class Case:
    """One benchmark row: a registered detector and its parameters.

    ``fixed_range``: parameters get ``min_value``/``max_value`` of the series at hand.
    """

    label: str
    detector: str
    params: Mapping[str, Any] = field(default_factory=dict)
    fixed_range: bool = False

    def build(self, params: Mapping[str, Any]) -> Any:
        return build_detector(self.detector, params)

    def restore(self, params: Mapping[str, Any], blob: bytes) -> Any:
        return detector_from_state(self.detector, params, blob)

    def params_for(self, values: np.ndarray) -> dict[str, Any]:
        params = dict(self.params)
        if self.fixed_range:
            params.update(min_value=float(values.min()), max_value=float(values.max()))
        return params


# NAB's CAD settings (contextOSE) for a series of NAB's longest kind (rest = 750 / 5)
CAD_NAB = {"max_left_semi_contexts_length": 7, "max_active_neurons_num": 15, "rest_period": 150}
CASES = (
    Case("*anchor*: ema", "ema"),
    Case("robust", "robust"),
    Case("cad (NAB settings, fixed min/max)", "cad", CAD_NAB, fixed_range=True),
    Case("cad (online range)", "cad"),
    Case("likelihood (base ema)", "likelihood"),
    Case("default", "default"),
)


def synthetic_series(n: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """``(ts_ms, values)``: daily sine (amplitude 10 around 50) + N(0, 1) noise + 8 spikes of ±15..40."""
    rng = np.random.default_rng(seed)
    i = np.arange(n)
    values = 50.0 + 10.0 * np.sin(2.0 * np.pi * i / DAY) + rng.normal(0.0, 1.0, n)
    spikes = rng.choice(np.arange(n // 10, n), size=min(8, max(n - n // 10, 0)), replace=False)
    values[spikes] += rng.choice([-1.0, 1.0], len(spikes)) * rng.uniform(15.0, 40.0, len(spikes))
    ts = 1_704_067_200_000 + i.astype(np.int64) * STEP_MS
    return ts, values


# -- micro-benchmark -----------------------------------------------------------------------
@dataclass
class Row:
    label: str
    update_rate: float = float("nan")
    batch_rate: float = float("nan")
    state_bytes: int = 0
    roundtrip_s: float = float("nan")
    roundtrip_ok: bool = False
    error: str | None = None


def _best_rate(run: Callable[[], None], points: int, repeat: int) -> float:
    """Points per second of CPU time of this process (one core; the machine is shared,
    so wall-clock time would also count other processes' turns)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    return points / best


def nab_longest_series(nab: Path) -> tuple[np.ndarray, np.ndarray] | None:
    path = nab / "data" / LONGEST
    if not path.is_file():
        return None
    series = bt.read_series(path)
    return series.ts_ms, series.values


def bench_case(case: Case, ts: np.ndarray, values: np.ndarray, repeat: int) -> Row:
    row = Row(case.label)
    params = case.params_for(values)
    try:
        ts_list, values_list = ts.tolist(), values.tolist()

        def loop() -> None:
            det = case.build(params)
            for t, v in zip(ts_list, values_list, strict=True):
                det.update(t, v)

        row.update_rate = _best_rate(loop, len(values), repeat)
        row.batch_rate = _best_rate(
            lambda: case.build(params).update_batch(ts, values), len(values), repeat
        )
        det = case.build(params)
        det.update_batch(ts, values)
        blob = det.to_state()
        row.state_bytes = len(blob)
        times = []
        restored = det
        for _ in range(max(5, 3 * repeat)):
            start = time.perf_counter()
            restored = case.restore(params, restored.to_state())
            times.append(time.perf_counter() - start)
        row.roundtrip_s = statistics.median(times)
        row.roundtrip_ok = restored.to_state() == blob
    except Exception as err:  # one broken detector must not hide the others
        row.error = f"{type(err).__name__}: {err}".splitlines()[0][:120]
        if os.environ.get("BENCH_DEBUG"):
            traceback.print_exc()
    return row


def _fmt_rate(rate: float) -> str:
    return f"{rate:,.0f}"


def _fmt_bytes(n: int) -> str:
    return f"{n:,} B" if n < 10_000 else f"{n / 1024:,.1f} KiB"


def _fmt_seconds(s: float) -> str:
    return f"{s * 1e6:,.0f} µs" if s < 1e-3 else f"{s * 1e3:,.1f} ms"


def micro_table(rows: list[Row], points: int) -> str:
    lines = [
        f"| detector | `update` points/s | `update_batch` points/s | `to_state()` after {points:,} points "
        "| to_state + from_state |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.error:
            lines.append(f"| {r.label} | error: {r.error} | | | |")
            continue
        rt = _fmt_seconds(r.roundtrip_s) + ("" if r.roundtrip_ok else " (state differs!)")
        lines.append(
            f"| {r.label} | {_fmt_rate(r.update_rate)} | {_fmt_rate(r.batch_rate)} | "
            f"{_fmt_bytes(r.state_bytes)} | {rt} |"
        )
    return "\n".join(lines)


# -- NAB -------------------------------------------------------------------------------------
def _corpus_dir(arg: Path | None, name: str) -> Path:
    """``arg``, else ``../shared/data/<name>`` (``$ANOMALY_SHARED_DIR`` for ``../shared``)."""
    if arg is not None:
        return arg
    shared = Path(os.environ.get("ANOMALY_SHARED_DIR", REPO.parent / "shared"))
    return shared / "data" / name


def _fixed_range_series(job: tuple[Path, str, Case]) -> tuple[str, nab_scoring.SeriesScores | None, str | None]:
    path, key, case = job
    try:
        series = bt.read_series(path)
        result = bt.run_detector(case.detector, case.params_for(series.values), series.ts_ms, series.values)
    except Exception as err:
        return key, None, f"{key}: {type(err).__name__}: {err}"
    return key, nab_scoring.SeriesScores(series.timestamps, result.anomaly_probability.tolist()), None


def run_nab_case(case: Case, data: Path, out: Path) -> dict[str, nab_scoring.SeriesScores]:
    if not case.fixed_range:
        return bt.run_backtest(data, out, case.detector, case.params_for(np.zeros(1)), jobs=NAB_JOBS, keep_scores=True)
    # Per-series parameters (the series' own range): same functions, own pool.
    jobs = [(p, p.relative_to(data).as_posix(), case) for p in bt.find_csvs(data)]
    jobs.sort(key=lambda j: -j[0].stat().st_size)
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    results, errors = {}, []
    with ctx.Pool(NAB_JOBS) as pool:
        for key, scores, error in pool.imap_unordered(_fixed_range_series, jobs):
            if error:
                errors.append(error)
            else:
                results[key] = scores
    if errors:
        raise bt.BacktestError(f"{len(errors)} series failed: " + "; ".join(errors))
    return dict(sorted(results.items()))


def _score_row(label: str, table: Mapping[str, nab_scoring.ProfileScore], seconds: float | None) -> str:
    cells = [f"{table[p].score:.2f}" if p in table else "" for p in PROFILES]
    std = table.get("standard")
    counts = f"{std.tp}/{std.fp}/{std.fn}" if std else ""
    took = "published" if seconds is None else f"{seconds:.0f} s"
    return f"| {label} | {' | '.join(cells)} | {counts} | {took} |"


def nab_table(nab: Path, cases: tuple[Case, ...]) -> str:
    windows = nab_scoring.load_windows(nab / "labels" / "combined_windows.json")
    profiles_file = nab / "config" / "profiles.json"
    profiles = nab_scoring.load_profiles(profiles_file) if profiles_file.is_file() else None
    lines = [
        f"NAB ({nab}): normalised score per profile; TP/FP/FN at the standard profile's threshold",
        "",
        "| detector | standard | low FP | low FN | TP/FP/FN (standard) | run time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("numenta", "contextOSE"):
        ref = nab / "reference_results" / name
        if ref.is_dir():
            table = bt.score_results_dir(ref, windows, profiles)
            lines.append(_score_row(f"*published {name}*", table, None))
        else:
            lines.append(f"| *published {name}* | not found under {ref} | | | | |")
    with tempfile.TemporaryDirectory(prefix="bench_detectors_") as tmp:
        for i, case in enumerate(cases):
            print(f"NAB: {case.label} ...", file=sys.stderr, flush=True)
            start = time.monotonic()
            try:
                scores = run_nab_case(case, nab / "data", Path(tmp) / f"case{i}")
                matched = bt.match_to_labels(scores, windows)
                table = nab_scoring.score_corpus(matched, windows, profiles)
            except Exception as err:
                msg = f"{type(err).__name__}: {err}".splitlines()[0][:120]
                lines.append(f"| {case.label} | error: {msg} | | | | |")
                continue
            lines.append(_score_row(case.label, table, time.monotonic() - start))
    lines += [
        "",
        "Every row runs the detector's default parameters; the fixed-range CAD gets each series' min/max",
        "(NAB's look-ahead). bench/cad_faithfulness.py reproduces contextOSE with NAB's full CAD settings.",
    ]
    return "\n".join(lines)


# -- state per application, per corpus -----------------------------------------------------
@dataclass
class StateRow:
    label: str
    corpus: str
    sizes: dict[str, int] = field(default_factory=dict)  # series key -> len(to_state()) after it
    declared: int | None = None
    error: str | None = None

    def cells(self) -> str:
        if self.error:
            return f"| {self.label} | {self.corpus} | error: {self.error} | | | | | |"
        worst = max(sorted(self.sizes), key=self.sizes.__getitem__)  # ties: the first by name
        median = statistics.median(self.sizes.values())
        over = sum(size > STATE_BUDGET for size in self.sizes.values())
        declared = "-" if self.declared is None else _fmt_bytes(self.declared)
        return (
            f"| {self.label} | {self.corpus} | {len(self.sizes)} | {_fmt_bytes(int(median))} "
            f"| {_fmt_bytes(self.sizes[worst])} | {worst} | {over} | {declared} |"
        )


def _state_after_series(job: tuple[Path, str, Case]) -> tuple[str, int | None, int | None, str | None]:
    """(key, len(to_state()) after the whole series, declared max_state_bytes, error)."""
    path, key, case = job
    try:
        series = bt.read_series(path)
        detector = case.build(case.params_for(series.values))
        detector.update_batch(series.ts_ms, series.values)
        return key, len(detector.to_state()), detector.max_state_bytes(), None
    except Exception as err:
        return key, None, None, f"{key}: {type(err).__name__}: {err}".splitlines()[0][:160]


def corpus_states(case: Case, corpus: str, data: Path, jobs: int) -> StateRow:
    """``case``'s state size after each series under ``data`` (largest series first, ``jobs`` at a time)."""
    row = StateRow(case.label, corpus)
    files = sorted(bt.find_csvs(data), key=lambda p: -p.stat().st_size)
    tasks = [(p, bt.series_key(p, data), case) for p in files]
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with ctx.Pool(max(1, min(jobs, len(tasks)))) as pool:
        for key, size, declared, error in pool.imap_unordered(_state_after_series, tasks):
            if error is not None:
                row.error = row.error or error
            elif size is not None:
                row.sizes[key] = size
                row.declared = declared
    return row


def state_table(cases: tuple[Case, ...], corpora: Mapping[str, Path], jobs: int) -> str:
    lines = [
        "State per application after the whole series (len(to_state())), every series of each corpus:",
        "",
        "| detector | corpus | series | median | largest | largest on | series over 64 KiB | declared max |",
        "|---|---|---:|---:|---:|---|---:|---:|",
    ]
    missing = []
    for name, data in corpora.items():
        if not data.is_dir():
            missing.append(f"{name} ({data})")
            continue
        for case in cases:
            print(f"state: {case.label} on {name} ...", file=sys.stderr, flush=True)
            lines.append(corpus_states(case, name, data, jobs).cells())
    if missing:
        lines += ["", "not found, skipped: " + ", ".join(missing)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--synthetic", action="store_true", help="time on the synthetic series, not NAB's longest")
    ap.add_argument("--points", type=int, default=10_000, help="length of the synthetic series (default 10000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per speed measurement, best is kept (default 3)")
    ap.add_argument("--nab", action="store_true", help="also run and score every detector on NAB")
    ap.add_argument("--nab-dir", type=Path, default=None, help="NAB folder (default ../shared/data/nab)")
    ap.add_argument("--only", default="", help="run only detectors whose label contains this")
    ap.add_argument("--state", action="store_true", help="state size per application on every corpus")
    ap.add_argument("--aiops-dir", type=Path, default=None, help="AIOps folder (default ../shared/data/aiops)")
    ap.add_argument("--jobs", type=int, default=NAB_JOBS, help=f"series in parallel for --state (default {NAB_JOBS})")
    ap.add_argument("--no-speed", action="store_true", help="skip the speed table (e.g. --state alone)")
    args = ap.parse_args(argv)
    if args.points < 1 or args.repeat < 1 or args.jobs < 1:
        ap.error("--points, --repeat and --jobs must be >= 1")
    cases = tuple(c for c in CASES if args.only in c.label)
    if not cases:
        ap.error(f"no detector label contains {args.only!r}")

    nab_series = None if args.synthetic else nab_longest_series(_corpus_dir(args.nab_dir, "nab"))
    env = f"Python {sys.version.split()[0]}, numpy {np.__version__}, CPU time of one process, best of {args.repeat}"
    if nab_series is not None:
        ts, values = nab_series
        print(f"Series: NAB {LONGEST}, {len(values):,} points; {env}.\n")
    else:
        if not args.synthetic:
            print("NAB data not found: synthetic series instead.")
        ts, values = synthetic_series(args.points)
        print(
            f"Synthetic series: {args.points:,} points every 5 min, seed {SEED}: 50 + 10 sin(daily) + N(0, 1) "
            f"+ 8 spikes; {env}.\n"
        )
    rows = []
    for case in cases if not args.no_speed else ():
        print(f"bench: {case.label} ...", file=sys.stderr, flush=True)
        rows.append(bench_case(case, ts, values, args.repeat))
    if rows:
        print(micro_table(rows, len(values)))
    if args.state:
        corpora = {
            "NAB": _corpus_dir(args.nab_dir, "nab") / "data",
            "AIOps": _corpus_dir(args.aiops_dir, "aiops") / "data",
        }
        print()
        print(state_table(cases, corpora, args.jobs))

    if args.nab:
        nab = _corpus_dir(args.nab_dir, "nab")
        if not (nab / "data").is_dir() or not (nab / "labels" / "combined_windows.json").is_file():
            print(
                f"\nNAB data not found at {nab} (expected data/ and labels/combined_windows.json); NAB scores skipped."
            )
        else:
            print()
            print(nab_table(nab, cases))
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
