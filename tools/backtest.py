"""Offline backtest: run a detector over CSV series and score it with NAB.

    python -m tools.backtest --data ../shared/data/nab/data --out out/ema --detector ema \\
        --labels ../shared/data/nab/labels/combined_windows.json
    python -m tools.backtest --score-only ../shared/data/nab/reference_results/numenta \\
        --labels ../shared/data/nab/labels/combined_windows.json

Every ``*.csv`` or gzip-compressed ``*.csv.gz`` (``timestamp,value``) under
``--data`` is one series, keyed by its path relative to ``--data`` without ``.gz``
(the key labels use, e.g. ``aiopsKPI/<kpi>.csv``), run separately in time order
through ``update_batch`` in chunks. Between chunks the detector goes through
``to_state()`` / ``detector_from_state()``, exactly what the Spark job's stateful
operator does between micro-batches, so the backtest exercises the state path too.
Results go to ``--out`` under the series' key (uncompressed), with columns
``timestamp,value,anomaly_score,is_anomaly,value_lower_limit,value_upper_limit``
(``anomaly_score`` is the detector's anomaly probability; a missing bound is empty).

With ``--incidents`` the job's incident state machine (incidents/, default rules,
the window length = the series' cadence) also runs over each series' results and
writes its transitions, one JSON record per line as on the job's ``incidents``
topic, to ``<result>.incidents.jsonl`` beside the result CSV.

With ``--labels`` (NAB's ``combined_windows.json`` format) the NAB score table is
printed per profile; ``--score-only DIR`` scores existing result CSVs (any with
``timestamp`` and ``anomaly_score`` columns, e.g. NAB's published results).

This module must stay importable without pyspark.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import multiprocessing
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from detectors.base import BatchResult
from detectors.params import ParamError
from detectors.registry import (
    available_detectors,
    build_detector,
    detector_from_state,
    get_detector_class,
)
from evaluation import nab_scoring

PROG = "anomaly-backtest"
OUTPUT_COLUMNS = (
    "timestamp",
    "value",
    "anomaly_score",
    "is_anomaly",
    "value_lower_limit",
    "value_upper_limit",
)
DEFAULT_ROUNDTRIP_EVERY = 1000


class BacktestError(Exception):
    """A problem with the inputs, reported as one line without a traceback."""


# -- input ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Series:
    """One input series in time order; the original text of timestamp and value is kept."""

    timestamps: list[str]
    values_text: list[str]
    ts_ms: np.ndarray
    values: np.ndarray


SERIES_SUFFIXES = (".csv", ".csv.gz")


def is_series_file(path: Path) -> bool:
    """A ``*.csv`` or gzip-compressed ``*.csv.gz`` file."""
    return path.name.endswith(SERIES_SUFFIXES) and path.is_file()


def series_key(path: Path, root: Path) -> str:
    """The series' key: its path relative to ``root``, ``.gz`` dropped (``a/b.csv.gz`` -> ``a/b.csv``).

    Labels name series by their CSV (NAB's ``combined_windows.json`` keys), whether
    the file on disk is compressed or not; results are written under the same key.

    >>> series_key(Path("data/aiopsKPI/k.csv.gz"), Path("data"))
    'aiopsKPI/k.csv'
    """
    rel = path.relative_to(root).as_posix()
    return rel[: -len(".gz")] if rel.endswith(".gz") else rel


def find_csvs(root: Path) -> list[Path]:
    """Every ``*.csv`` and ``*.csv.gz`` under ``root``, recursively, in a stable order.

    A series present both compressed and not (``x.csv`` beside ``x.csv.gz``) is an
    error: the two would share one key and one result file.
    """
    if not root.exists():
        raise BacktestError(f"{root}: no such directory")
    if not root.is_dir():
        raise BacktestError(f"{root}: not a directory")
    files = sorted(p for p in root.rglob("*.csv*") if is_series_file(p))
    if not files:
        raise BacktestError(f"{root}: no *.csv files found (nor *.csv.gz; searched recursively)")
    seen: dict[str, Path] = {}
    for path in files:
        key = series_key(path, root)
        if key in seen:
            raise BacktestError(f"{seen[key]} and {path}: the same series twice (compressed and not); keep one")
        seen[key] = path
    return files


def open_text(path: Path) -> TextIO:
    """A CSV for reading as text; ``*.gz`` is decompressed on the fly."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", newline="", encoding="utf-8")
    return open(path, newline="", encoding="utf-8")


def _columns(path: Path, header: Sequence[str] | None, needed: Sequence[str]) -> list[int]:
    names = [h.strip().lower() for h in (header or [])]
    missing = [c for c in needed if c not in names]
    if missing:
        raise BacktestError(f"{path}: missing column(s) {', '.join(missing)}; header is {header}")
    return [names.index(c) for c in needed]


def read_series(path: Path) -> Series:
    """A ``timestamp,value`` CSV (``*.csv.gz``: gzip-compressed), stably sorted by time if it is not already."""
    timestamps: list[str] = []
    values_text: list[str] = []
    ts_ms: list[int] = []
    values: list[float] = []
    with open_text(path) as fh:
        reader = csv.reader(fh)
        t_col, v_col = _columns(path, next(reader, None), ("timestamp", "value"))
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                t_text, v_text = row[t_col].strip(), row[v_col].strip()
                ts_ms.append(nab_scoring.to_epoch_ms(t_text))
                value = float(v_text)
            except (IndexError, ValueError) as err:
                raise BacktestError(f"{path}:{line}: bad row {row!r}: {err}") from None
            if not np.isfinite(value):
                raise BacktestError(f"{path}:{line}: value must be finite, got {v_text!r}")
            timestamps.append(t_text)
            values_text.append(v_text)
            values.append(value)
    ts = np.asarray(ts_ms, dtype=np.int64)
    vals = np.asarray(values, dtype=np.float64)
    if len(ts) > 1 and np.any(np.diff(ts) < 0):
        order = np.argsort(ts, kind="stable")
        ts, vals = ts[order], vals[order]
        timestamps = [timestamps[i] for i in order]
        values_text = [values_text[i] for i in order]
    return Series(timestamps, values_text, ts, vals)


def parse_params(pairs: Sequence[str], detector: str) -> dict[str, Any]:
    """``["key=value", ...]`` validated against the detector's schema.

    Errors name the field (``--param window: must be >= 2, got 1``). The literal
    ``null``/``none`` stands for None on nullable parameters.
    """
    cls = get_detector_class(detector, field="--detector")
    raw: dict[str, Any] = {}
    by_name = {p.name: p for p in cls.params.params}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ParamError(f"--param {pair}", "expected key=value")
        param = by_name.get(key)
        if param is not None and param.nullable and value.strip().lower() in ("null", "none"):
            raw[key] = None
        else:
            raw[key] = value.strip()
    return cls.params.validate(raw, prefix="--param ")


# -- running --------------------------------------------------------------------------------
def run_detector(
    detector: str,
    params: Mapping[str, Any],
    ts_ms: np.ndarray,
    values: np.ndarray,
    roundtrip_every: int = DEFAULT_ROUNDTRIP_EVERY,
) -> BatchResult:
    """Run one series through ``update_batch`` in chunks of ``roundtrip_every`` points,
    rebuilding the detector from ``to_state()`` between chunks (0: one chunk, no round-trip).
    """
    n = len(values)
    step = roundtrip_every if roundtrip_every > 0 else max(n, 1)
    det = build_detector(detector, params)
    parts: list[BatchResult] = []
    for start in range(0, n, step):
        if start:
            det = detector_from_state(detector, params, det.to_state())
        parts.append(det.update_batch(ts_ms[start : start + step], values[start : start + step]))
    if not parts:
        empty = np.zeros(0)
        return BatchResult(empty, empty.copy(), empty.copy(), np.zeros(0, dtype=bool))
    return BatchResult(
        np.concatenate([p.value_lower_limit for p in parts]).astype(np.float64),
        np.concatenate([p.value_upper_limit for p in parts]).astype(np.float64),
        np.concatenate([p.anomaly_probability for p in parts]).astype(np.float64),
        np.concatenate([p.is_anomaly for p in parts]).astype(bool),
        np.concatenate([p.explanation for p in parts]),
    )


def _fmt(x: float) -> str:
    return "" if np.isnan(x) else repr(float(x))


def write_result(path: Path, series: Series, result: BatchResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(OUTPUT_COLUMNS)
        for i in range(len(series.timestamps)):
            writer.writerow(
                (
                    series.timestamps[i],
                    series.values_text[i],
                    repr(float(result.anomaly_probability[i])),
                    1 if result.is_anomaly[i] else 0,
                    _fmt(result.value_lower_limit[i]),
                    _fmt(result.value_upper_limit[i]),
                )
            )
    os.replace(tmp, path)


def write_incidents(path: Path, key: str, detector: str, series: Series, result: BatchResult) -> None:
    """The series' incident transitions (incidents/replay.py), one JSON record per line."""
    import json

    from incidents.replay import series_incidents

    records = series_incidents(key, detector, series.ts_ms, series.values, result)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)


@dataclass(frozen=True)
class _Task:
    source: Path
    target: Path
    key: str
    detector: str
    params: dict[str, Any]
    roundtrip_every: int
    keep_scores: bool
    incidents: bool = False


@dataclass(frozen=True)
class _Done:
    key: str
    points: int
    timestamps: list[str] | None
    scores: list[float] | None
    error: str | None = None


def _run_task(task: _Task) -> _Done:
    try:
        series = read_series(task.source)
        result = run_detector(task.detector, task.params, series.ts_ms, series.values, task.roundtrip_every)
        write_result(task.target, series, result)
        if task.incidents:
            write_incidents(task.target.with_name(task.target.name + ".incidents.jsonl"), task.key, task.detector,
                            series, result)
    except BacktestError as err:
        return _Done(task.key, 0, None, None, str(err))
    except Exception as err:  # one bad series must not hide the others' results
        return _Done(task.key, 0, None, None, f"{task.source}: {type(err).__name__}: {err}")
    if task.keep_scores:
        return _Done(task.key, len(series.values), series.timestamps, result.anomaly_probability.tolist())
    return _Done(task.key, len(series.values), None, None)


class Progress:
    """``[#####.....] 12/31 series  123456 points  45678 points/s`` on stderr.

    Redrawn in place on a terminal; otherwise a line at most every few seconds.
    """

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total, self.done, self.points = total, 0, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = self._last = time.monotonic()

    def advance(self, points: int) -> None:
        self.done += 1
        self.points += points
        now = time.monotonic()
        if self.enabled and (self.tty or now - self._last >= 5.0 or self.done == self.total):
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        width = 30
        filled = width * self.done // max(self.total, 1)
        rate = self.points / max(now - self.start, 1e-9)
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} series  "
            f"{self.points} points  {rate:,.0f} points/s"
        )
        if self.tty:
            end = "\n" if self.done == self.total else ""
            self.stream.write("\r" + line + end)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def run_backtest(
    data: Path,
    out: Path,
    detector: str,
    params: Mapping[str, Any],
    roundtrip_every: int = DEFAULT_ROUNDTRIP_EVERY,
    jobs: int = 1,
    keep_scores: bool = False,
    progress: Progress | None = None,
    incidents: bool = False,
) -> dict[str, nab_scoring.SeriesScores]:
    """Run every series under ``data``; returns relative path -> scores if ``keep_scores``; with ``incidents``
    each series' incident transitions are written beside its result."""
    files = find_csvs(data)
    out_resolved = out.resolve()
    tasks = []
    for src in files:
        if out_resolved in src.resolve().parents:
            continue  # --out inside --data: do not feed earlier results back in
        key = series_key(src, data)  # x.csv.gz -> x.csv, written uncompressed
        tasks.append(_Task(src, out / key, key, detector, dict(params), roundtrip_every, keep_scores, incidents))
    # Largest first, so parallel workers finish together.
    tasks.sort(key=lambda t: -t.source.stat().st_size)
    progress = progress or Progress(len(tasks), enabled=False)
    progress.total = len(tasks)
    results: dict[str, nab_scoring.SeriesScores] = {}
    errors: list[str] = []

    def collect(done: _Done) -> None:
        if done.error:
            errors.append(done.error)
        elif done.timestamps is not None and done.scores is not None:
            results[done.key] = nab_scoring.SeriesScores(done.timestamps, done.scores)
        progress.advance(done.points)

    if jobs <= 1 or len(tasks) <= 1:
        for task in tasks:
            collect(_run_task(task))
    else:
        # fork keeps detectors registered in this process (tests, notebooks) visible.
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ctx.Pool(min(jobs, len(tasks))) as pool:
            for done in pool.imap_unordered(_run_task, tasks):
                collect(done)
    if errors:
        raise BacktestError(f"{len(errors)} series failed:\n  " + "\n  ".join(errors))
    return dict(sorted(results.items()))


# -- scoring --------------------------------------------------------------------------------
def label_key_for(rel: str, label_keys: Sequence[str]) -> str | None:
    """The labels entry of a result file: same relative path, or NAB's result naming.

    NAB names result files ``<folder>/<detector>_<series>.csv`` for the data file
    ``<folder>/<series>.csv``; a path ending in a label key also matches.

    >>> keys = ["realTraffic/speed_6005.csv", "realTraffic/occupancy_6005.csv"]
    >>> label_key_for("realTraffic/numenta_speed_6005.csv", keys)
    'realTraffic/speed_6005.csv'
    >>> label_key_for("nab/realTraffic/occupancy_6005.csv", keys)
    'realTraffic/occupancy_6005.csv'
    """
    if rel in label_keys:
        return rel
    folder, _, name = rel.rpartition("/")
    matches = []
    for key in label_keys:
        key_folder, _, key_name = key.rpartition("/")
        same_folder = folder == key_folder or folder.endswith("/" + key_folder)
        if rel.endswith("/" + key) or (same_folder and name.endswith("_" + key_name)):
            matches.append(key)
    if not matches:
        return None
    return max(matches, key=len)  # "a_b.csv" beats "b.csv" for "x_a_b.csv"


def read_result_scores(path: Path) -> nab_scoring.SeriesScores:
    """``timestamp`` and ``anomaly_score`` columns of a result CSV, in file order."""
    timestamps, scores = [], []
    with open_text(path) as fh:
        reader = csv.reader(fh)
        t_col, s_col = _columns(path, next(reader, None), ("timestamp", "anomaly_score"))
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                timestamps.append(row[t_col].strip())
                scores.append(float(row[s_col]))
            except (IndexError, ValueError) as err:
                raise BacktestError(f"{path}:{line}: bad row {row!r}: {err}") from None
    return nab_scoring.SeriesScores(timestamps, scores)


def match_to_labels(
    scores: Mapping[str, nab_scoring.SeriesScores],
    windows: Mapping[str, Any],
    warn: TextIO | None = None,
) -> dict[str, nab_scoring.SeriesScores]:
    """Re-key results by their labels entry; results without labels are left out (warned)."""
    keys = list(windows)
    matched: dict[str, nab_scoring.SeriesScores] = {}
    unmatched = []
    for rel, series in scores.items():
        key = label_key_for(rel, keys)
        if key is None:
            unmatched.append(rel)
            continue
        if key in matched:
            raise BacktestError(f"two result files match the labels of {key!r}")
        matched[key] = series
    if warn is not None and unmatched:
        warn.write(f"{PROG}: not scored, no labels for: {', '.join(unmatched)}\n")
    if warn is not None and matched and len(matched) < len(keys):
        warn.write(f"{PROG}: labels list {len(keys)} series; scoring the {len(matched)} found\n")
    return matched


def score_results_dir(
    results_dir: Path,
    windows: Mapping[str, Any],
    profiles: Mapping[str, nab_scoring.CostMatrix] | None = None,
    warn: TextIO | None = None,
) -> dict[str, nab_scoring.ProfileScore]:
    """NAB scores of existing result CSVs (``anomaly_score`` column) under ``results_dir``."""
    scores = {series_key(p, results_dir): read_result_scores(p) for p in find_csvs(results_dir)}
    return _score(scores, windows, profiles, warn)


def _score(
    scores: Mapping[str, nab_scoring.SeriesScores],
    windows: Mapping[str, Any],
    profiles: Mapping[str, nab_scoring.CostMatrix] | None,
    warn: TextIO | None,
) -> dict[str, nab_scoring.ProfileScore]:
    matched = match_to_labels(scores, windows, warn)
    if not matched:
        raise BacktestError("no result file matches an entry of the labels file")
    try:
        return nab_scoring.score_corpus(matched, windows, profiles)
    except ValueError as err:
        raise BacktestError(str(err)) from None


def print_scores(results: Mapping[str, nab_scoring.ProfileScore], stream: TextIO) -> None:
    first = next(iter(results.values()))
    stream.write(f"NAB scores: {len(first.per_series)} series, {first.tp + first.fn} windows\n")
    stream.write(nab_scoring.format_table(results) + "\n")


# -- command line -------------------------------------------------------------------------
def _detectors_help() -> str:
    lines = ["available detectors and their parameters (--param key=value):"]
    for name, origin in sorted(available_detectors().items()):
        try:
            cls = get_detector_class(name)
        except Exception as err:  # a detector that cannot be imported must not break --help
            lines.append(f"  {name}: unavailable ({type(err).__name__}: {err})")
            continue
        doc = (cls.__doc__ or "").strip().splitlines()
        lines.append(f"  {name}" + (f": {doc[0]}" if doc else "") + ("" if "detectors." in origin else f" [{origin}]"))
        lines.append(cls.params.help(indent="      ") or "      (no parameters)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run a detector over every timestamp,value CSV (or .csv.gz) under --data (each file one series,\n"
            "in time order, with a state round-trip every N points like the streaming job),\n"
            "write one result CSV per series under --out, and print NAB scores with --labels.\n"
            "--score-only DIR scores existing result CSVs instead of running a detector."
        ),
        epilog=_detectors_help() + "\n\nexamples:\n"
        "  anomaly-backtest --data ../shared/data/nab/data --out out/ema --detector ema \\\n"
        "      --labels ../shared/data/nab/labels/combined_windows.json --jobs 2\n"
        "  anomaly-backtest --score-only ../shared/data/nab/reference_results/numenta \\\n"
        "      --labels ../shared/data/nab/labels/combined_windows.json",
    )
    parser.add_argument(
        "--data", type=Path, metavar="DIR", help="folder of input *.csv / *.csv.gz (searched recursively)"
    )
    parser.add_argument("--out", type=Path, metavar="DIR", help="folder for the result CSVs")
    parser.add_argument("--detector", metavar="NAME", help="detector name (see below)")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="detector parameter; repeat for several",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        metavar="FILE",
        help="NAB combined_windows.json: print the NAB score table per profile",
    )
    parser.add_argument(
        "--profiles",
        type=Path,
        metavar="FILE",
        help="NAB profiles.json (default: NAB's standard, reward_low_FP_rate, reward_low_FN_rate)",
    )
    parser.add_argument(
        "--state-roundtrip-every",
        type=int,
        default=DEFAULT_ROUNDTRIP_EVERY,
        metavar="N",
        help=f"points per chunk between to_state/from_state round-trips; 0 = never (default {DEFAULT_ROUNDTRIP_EVERY})",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="series processed in parallel (default 1; 0 = one per CPU)",
    )
    parser.add_argument(
        "--score-only",
        type=Path,
        metavar="DIR",
        help="score the result CSVs (timestamp, anomaly_score columns) under DIR; needs --labels",
    )
    parser.add_argument(
        "--incidents",
        action="store_true",
        help="also write each series' incident transitions (the job's state machine) to <result>.incidents.jsonl",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _main(args, parser)
    except ParamError as err:  # includes UnknownDetectorError, which lists the detectors
        parser.error(str(err))  # exits with status 2
    except BacktestError as err:
        sys.stderr.write(f"{PROG}: error: {err}\n")
        return 1


def _main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    windows = profiles = None
    if args.labels is not None:
        if not args.labels.is_file():
            parser.error(f"--labels {args.labels}: no such file")
        try:
            windows = nab_scoring.load_windows(args.labels)
        except (OSError, ValueError) as err:
            parser.error(f"--labels: {err}")
    if args.profiles is not None:
        if not args.profiles.is_file():
            parser.error(f"--profiles {args.profiles}: no such file")
        try:
            profiles = nab_scoring.load_profiles(args.profiles)
        except (OSError, ValueError) as err:
            parser.error(f"--profiles: {err}")

    if args.score_only is not None:
        if windows is None:
            parser.error("--score-only needs --labels FILE")
        if args.data or args.out or args.detector or args.param:
            parser.error("--score-only does not take --data, --out, --detector or --param")
        table = score_results_dir(args.score_only, windows, profiles, warn=sys.stderr)
        print_scores(table, sys.stdout)
        return 0

    missing = [flag for flag, v in (("--data", args.data), ("--out", args.out), ("--detector", args.detector)) if not v]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)} (or use --score-only DIR)")
    if args.state_roundtrip_every < 0:
        parser.error("--state-roundtrip-every must be >= 0")
    if args.jobs < 0:
        parser.error("--jobs must be >= 0")
    params = parse_params(args.param, args.detector)  # ParamError names the field
    jobs = args.jobs or os.cpu_count() or 1
    progress = Progress(0, enabled=not args.quiet)
    started = time.monotonic()
    scores = run_backtest(
        args.data,
        args.out,
        args.detector,
        params,
        roundtrip_every=args.state_roundtrip_every,
        jobs=jobs,
        keep_scores=windows is not None,
        progress=progress,
        incidents=args.incidents,
    )
    if not args.quiet:
        sys.stderr.write(
            f"{PROG}: {progress.done} series, {progress.points} points in "
            f"{time.monotonic() - started:.1f}s -> {args.out}\n"
        )
    if windows is not None:
        print_scores(_score(scores, windows, profiles, sys.stderr), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
