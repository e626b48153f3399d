"""Incident quality on labelled data: what an on-call engineer would get from ``default`` + incidents.

    .venv/bin/python bench/incident_quality.py [--nab-dir ../shared/data/nab] [--aiops-dir ../shared/data/aiops]
                                               [--detector default] [--jobs 2] [--resolve-minutes 0,30,60]
                                               [--merge-gap-minutes 60,120,240]

Every series of each corpus runs through the detector as the backtest does
(tools/backtest.py: state round trips every 1,000 points), then through the
job's incident state machine (incidents/replay.py, default rules: one window at
the threshold opens, resolved after an hour of clean windows, at least 2;
reopened within 30 minutes). Per corpus, against its labelled anomaly windows
(``labels/combined_windows.json``):

* ``notif/window``: notifications inside labelled windows per window that got
  any. A notification is a page: what makes Alertmanager (or a webhook receiver)
  notify "firing", by the notifier's own rule (incidents/paging.py, which
  tools/notify.py runs): an incident ``opened``, or a ``reopened`` /
  ``flapping`` after its alert ended. The notifier keeps a cleanly resolved
  incident's alert firing for its merge gap (the time it can reopen under the
  same id), so a reopen, which the job only makes within that gap, continues the
  firing alert and does not page; updates never page (the alert's severity
  label is fixed at opening). The ``keep firing 0`` row is the notifier with
  ``--keep-firing-seconds 0`` (the alert ends at the resolve): every reopen and
  flapping pages again;
* ``pages o/r/f``: those pages inside labelled windows by transition:
  ``opened`` / ``reopened`` / ``flapping``;
* ``windows w/ incident``: labelled windows with an incident opened, reopened or
  flapping inside (its alert firing because of it, paged or not), beside
  ``windows w/ point``: windows where the detector flags at least one point
  (what the per-point output finds);
* ``false inc/series-day``: incidents opened outside every window, per day of
  series;
* ``median first (min)``: from the window's start to its first page.

The anchor row of each corpus, measured in the same run, is the per-point
output itself (every flagged point a notification: what a consumer without the
incident layer would page on). ``--resolve-minutes`` adds rows with
``resolve_after`` set to that many minutes of clean windows (0: the default
rule), on the same detector output: the hysteresis is the knob that merges an
anomaly's repeated alarms into one incident.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from evaluation import nab_scoring  # noqa: E402
from incidents.paging import FIRING, kinds  # noqa: E402
from incidents.replay import cadence_ms, series_incidents  # noqa: E402
from incidents.rules import parse_settings  # noqa: E402
from tools.backtest import find_csvs, read_series, run_detector, series_key  # noqa: E402

DAY_MS = 86_400_000
# the transitions that can page (incidents/paging.py decides which do) and that mark an incident active
ACTIVE = ("opened", "reopened", "flapping")


@dataclass
class SeriesFigures:
    windows: int = 0
    with_point: int = 0
    with_incident: int = 0
    notifications_in: int = 0
    pages_in: tuple[int, int, int] = (0, 0, 0)  # inside windows, by transition: opened, reopened, flapping
    windows_notified: int = 0
    false_incidents: int = 0
    point_notifications_in: int = 0
    false_points: int = 0
    days: float = 0.0
    delays_min: tuple[float, ...] = ()


def _ms(iso: str) -> int:
    return int(np.datetime64(iso.rstrip("Z"), "ms").astype(np.int64))


def notifications(records: list[dict], keep_firing_ms: float | None = None) -> list[tuple[int, str]]:
    """(event time, transition) of the records that page, as the notifier decides (incidents/paging.py)
    with ``--keep-firing-seconds`` = ``keep_firing_ms`` / 1000 (None: the merge gap, its default)."""
    return [(_ms(r["event_ts"]), r["transition"]) for r, kind in zip(records, kinds(records, keep_firing_ms),
                                                                     strict=True) if kind == FIRING]


def figures_of(ts: np.ndarray, flags: np.ndarray, notified: list[tuple[int, str]], records: list[dict],
               windows: list[tuple[int, int]]) -> SeriesFigures:
    f = SeriesFigures(windows=len(windows), days=(int(ts[-1]) - int(ts[0])) / DAY_MS if len(ts) else 0.0)
    notes = np.array([t for t, _ in notified], dtype=np.int64)
    note_kind = np.array([ACTIVE.index(k) if k in ACTIVE else len(ACTIVE) for _, k in notified], dtype=np.int64)
    opens = np.array([_ms(r["event_ts"]) for r in records if r["transition"] == "opened"], dtype=np.int64)
    active = np.array([_ms(r["event_ts"]) for r in records if r["transition"] in ACTIVE], dtype=np.int64)
    points = ts[flags]
    inside_open = np.zeros(len(opens), dtype=bool)
    inside_point = np.zeros(len(points), dtype=bool)
    delays = []
    by_kind = np.zeros(len(ACTIVE) + 1, dtype=np.int64)
    for start, end in windows:
        note_in = (notes >= start) & (notes <= end)
        in_notes = notes[note_in]
        by_kind += np.bincount(note_kind[note_in], minlength=len(ACTIVE) + 1)
        in_opens = (opens >= start) & (opens <= end)
        in_points = (points >= start) & (points <= end)
        inside_open |= in_opens
        inside_point |= in_points
        f.with_point += bool(in_points.any())
        f.with_incident += bool(((active >= start) & (active <= end)).any())
        f.notifications_in += len(in_notes)
        f.point_notifications_in += int(in_points.sum())
        if len(in_notes):
            f.windows_notified += 1
            delays.append((int(in_notes.min()) - start) / 60_000)
    f.pages_in = (int(by_kind[0]), int(by_kind[1]), int(by_kind[2]))
    f.false_incidents = int((~inside_open).sum())
    f.false_points = int((~inside_point).sum())
    f.delays_min = tuple(delays)
    return f


Setting = tuple[str, int]  # ("resolve", minutes of clean windows; 0: the default rule) or ("merge", gap minutes)


def _one(task: tuple[Path, str, str, list[tuple[int, int]], tuple[Setting, ...]]) -> list[SeriesFigures]:
    """One series: the detector once, then the incidents under each resolve setting (the first one's
    twice: the notifier keeping alerts firing through the merge gap, then with keep firing 0)."""
    path, key, detector, windows, settings = task
    series = read_series(path)
    result = run_detector(detector, {}, series.ts_ms, series.values)
    flags = np.asarray(result.is_anomaly, dtype=bool)
    out = []
    for kind, minutes in settings:
        rules: dict[str, int] = {}
        if kind == "resolve" and minutes:
            rules = {"resolve_after": max(2, -(-minutes * 60_000 // cadence_ms(series.ts_ms)))}
        elif kind == "merge":
            rules = {"merge_gap_millis": minutes * 60_000}
        records = series_incidents(key, detector, series.ts_ms, series.values, result, parse_settings(rules))
        out.append(figures_of(series.ts_ms, flags, notifications(records), records, windows))
        if len(out) == 1:
            out.append(figures_of(series.ts_ms, flags, notifications(records, 0), records, windows))
    return out


def corpus(root: Path, detector: str, jobs: int, settings: tuple[Setting, ...]) -> list[list[SeriesFigures]]:
    """Per resolve setting (the first one twice: keep firing as the notifier does, then 0), the figures
    of every labelled series."""
    data = root / "data"
    labels = nab_scoring.load_windows(root / "labels" / "combined_windows.json")
    tasks = [(p, series_key(p, data), detector, labels.get(series_key(p, data), []), settings)
             for p in find_csvs(data)]
    tasks = [t for t in tasks if t[1] in labels]
    if jobs <= 1:
        per_series = [_one(t) for t in tasks]
    else:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            per_series = pool.map(_one, tasks)
    return [[figures[k] for figures in per_series] for k in range(len(settings) + 1)]


def row(name: str, figures: list[SeriesFigures], points: bool = False) -> str:
    windows = sum(f.windows for f in figures)
    days = sum(f.days for f in figures)
    if points:
        notified = sum(f.with_point for f in figures)
        per_window = sum(f.point_notifications_in for f in figures) / max(notified, 1)
        false = sum(f.false_points for f in figures) / max(days, 1e-9)
        found, delay = notified, "-"
    else:
        notified = sum(f.windows_notified for f in figures)
        per_window = sum(f.notifications_in for f in figures) / max(notified, 1)
        false = sum(f.false_incidents for f in figures) / max(days, 1e-9)
        found = sum(f.with_incident for f in figures)
        delays = [d for f in figures for d in f.delays_min]
        delay = f"{np.median(delays):.0f}" if delays else "-"
    with_point = sum(f.with_point for f in figures)
    pages = "-" if points else "/".join(str(sum(f.pages_in[k] for f in figures)) for k in range(3))
    return (f"{name:<52} {len(figures):>6} {windows:>7} {per_window:>12.2f} {pages:>12} {found:>10} "
            f"{with_point:>10} {false:>12.3f} {delay:>11}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nab-dir", type=Path, default=REPO.parent / "shared" / "data" / "nab")
    parser.add_argument("--aiops-dir", type=Path, default=REPO.parent / "shared" / "data" / "aiops")
    parser.add_argument("--detector", default="default")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--resolve-minutes", default="0,30,60",
                        help="comma list: resolve after this many minutes of clean windows (0: the default rule)")
    parser.add_argument("--merge-gap-minutes", default="",
                        help="comma list: rows with the default rules but merge_gap_millis of this many minutes")
    args = parser.parse_args(argv)
    settings: tuple[Setting, ...] = tuple(("resolve", int(m)) for m in args.resolve_minutes.split(","))
    settings += tuple(("merge", int(m)) for m in args.merge_gap_minutes.split(",") if m.strip())
    print(f"{'corpus / output':<52} {'series':>6} {'windows':>7} {'notif/window':>12} {'pages o/r/f':>12} "
          f"{'w/ incid.':>10} {'w/ point':>10} {'false/s-day':>12} {'median 1st':>11}")
    for name, root in (("NAB", args.nab_dir), ("AIOps KPI", args.aiops_dir)):
        if not (root / "labels" / "combined_windows.json").is_file():
            print(f"{name}: no labels under {root}, skipped")
            continue
        by_setting = corpus(root, args.detector, args.jobs, settings)
        print(row(f"{name}: {args.detector} points (anchor)", by_setting[0], points=True))
        labels = [
            f"merge gap {m} min" if kind == "merge" else f"resolve {m} min" if m else "default rules"
            for kind, m in settings
        ]
        labels.insert(1, f"{labels[0]}, keep firing 0")
        for label, figures in zip(labels, by_setting, strict=True):
            print(row(f"{name}: + incidents, {label}", figures))
    print("notif/window: pages (what the notifier makes Alertmanager send as firing: incidents/paging.py) inside "
          "labelled windows per window that got any; pages o/r/f: those pages by transition (opened / reopened / "
          "flapping); keep firing 0: the notifier with --keep-firing-seconds 0 (every reopen pages); w/ incid.: "
          "windows with an incident opened, reopened or flapping; w/ point: windows with a flagged point; "
          "false/s-day: incidents (anchor: points) outside every window per series-day; median 1st: minutes from "
          "window start to the first page")
    return 0


if __name__ == "__main__":
    sys.exit(main())
