"""The demo, end to end: ``scripts/demo.sh`` (or ``python -m tools.demo``).

1. starts a single-node Kafka broker on loopback (tools/local_kafka.py);
2. produces a synthetic day of metrics for four applications -- daily
   seasonality, noise, injected spikes, dips and a level shift -- plus a few
   malformed messages, with kafka-python;
3. submits the job with ``./spark-submit.sh`` and ``--available-now`` using
   conf/demo.yaml, so it consumes the topic and stops;
4. prints, per application and detector, the points scored, the anomalies
   flagged and which injected anomalies were found, then where results are;
5. hands the incidents the job opened to a local Alertmanager through the
   notifier (tools/demo_notify.py) and prints the notifications its webhook
   received: one when an incident opens, one when it resolves.

It exits 0 only if every injected anomaly was found by the judged detector
(``--judge``, ``default`` by default) with at most ``MAX_FALSE_ALARMS`` false alarm per
application and every incident was notified exactly once, and always stops the broker.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tools.demo_notify import run_notifications
from tools.local_kafka import LocalKafkaBroker
from tools.synthetic import InjectedAnomaly, consume_all, generate, produce_messages

REPO = Path(__file__).resolve().parent.parent
WINDOW_MS = 300_000
MAX_FALSE_ALARMS = 1  # per application, for the judged detector
BAD_MESSAGES = [
    b"this is not json",
    b'{"application": "checkout", "value": "high", "ts": "2024-01-01T03:00:00Z"}',
    b'{"application": "checkout", "value": 12.5}',
    b'{"application": "", "value": 1.0, "ts": "2024-01-01T03:00:00Z"}',
]


def _ms(ts: str) -> int:
    return round(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


def _hhmm(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%H:%M")


def _span(anomaly: InjectedAnomaly) -> tuple[int, int]:
    """The windows an injected anomaly covers: [start, end) in ms (a level shift: its first hour)."""
    start = _ms(anomaly.ts) - _ms(anomaly.ts) % WINDOW_MS
    return start, (_ms(anomaly.end_ts) if anomaly.end_ts else start + 3_600_000)


def found(anomaly: InjectedAnomaly, flagged_ms: list[int]) -> int | None:
    """The first flagged window that overlaps the injected anomaly (a level shift: its first hour)."""
    start, end = _span(anomaly)
    hits = [ms for ms in flagged_ms if start <= ms < end]
    return min(hits) if hits else None


def summarize(db_path: Path, anomalies: list[InjectedAnomaly], judge: str) -> tuple[str, bool]:
    """The summary table, and whether ``judge`` found every injected anomaly."""
    con = sqlite3.connect(db_path)
    rows = con.execute(
        "SELECT application, detector, COUNT(*) FROM predictions "
        "GROUP BY application, detector ORDER BY application, detector"
    ).fetchall()
    lines = [
        f"{'application':<11} {'detector':<8} {'points':>6} {'flagged':>7} {'found':>5} {'false':>5}"
        "  injected anomaly -> first flagged window",
        "-" * 96,
    ]
    all_found = True
    for app, detector, points in rows:
        flagged_ms = [
            _ms(ts)
            for (ts,) in con.execute(
                "SELECT ts FROM predictions WHERE application=? AND detector=? AND is_anomaly=1 ORDER BY ts",
                (app, detector),
            )
        ]
        notes, hits, covered = [], 0, set()
        for anomaly in (a for a in anomalies if a.application == app):
            hit = found(anomaly, flagged_ms)
            start, end = _span(anomaly)
            covered |= {ms for ms in flagged_ms if start <= ms < end}
            notes.append(f"{anomaly.kind} {anomaly.ts[11:16]} -> {_hhmm(hit) if hit else 'MISSED'}")
            hits += hit is not None
            if hit is None and detector == judge:
                all_found = False
        false_alarms = len(flagged_ms) - len(covered)
        if detector == judge and false_alarms > MAX_FALSE_ALARMS:
            all_found = False
        injected = sum(a.application == app for a in anomalies)
        lines.append(
            f"{app:<11} {detector:<8} {points:>6} {len(flagged_ms):>7} {hits:>2}/{injected:<2} {false_alarms:>5}"
            f"  {'; '.join(notes)}"
        )
    return "\n".join(lines), all_found


def submit_job(bootstrap_servers: str, work: Path, **run_kwargs: Any) -> subprocess.CompletedProcess:
    """The demo's job: ``./spark-submit.sh`` with conf/demo.yaml and ``--available-now``
    (``run_kwargs`` go to subprocess.run, e.g. to capture the log in a test)."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers, "ANOMALY_WORK_DIR": str(work)}
    command = [
        str(REPO / "spark-submit.sh"),
        "--master",
        "local[2]",
        "--",
        "--config",
        str(REPO / "conf" / "demo.yaml"),
        "--available-now",
    ]
    return subprocess.run(command, env=env, cwd=REPO, check=False, **run_kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", default=str(REPO / "work" / "demo"), help="results and checkpoints")
    parser.add_argument("--points", type=int, default=1440, help="points per application (1 per minute)")
    parser.add_argument("--judge", default="default",
                        help="detector that must find every injected anomaly with at most one false alarm "
                             "per application")
    parser.add_argument("--keep", action="store_true", help="keep results of an earlier demo run")
    args = parser.parse_args(argv)
    work = Path(args.work_dir).resolve()
    if work.exists() and not args.keep:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)

    stream = generate(points_per_app=args.points)
    print(
        f"demo: {len(stream.messages):,} metric messages for 4 applications, "
        f"{len(stream.anomalies)} injected anomalies, {len(BAD_MESSAGES)} malformed messages"
    )
    with LocalKafkaBroker(work / "kafka", num_partitions=2) as broker:
        print(f"demo: Kafka broker at {broker.bootstrap_servers} (started in {broker.last_startup_seconds:.1f} s)")
        for topic in ("metrics", "anomalies", "metrics-dead-letters", "incidents", "incident-feedback"):
            broker.create_topic(topic, partitions=2)
        produce_messages(broker.bootstrap_servers, "metrics", stream.messages)
        produce_messages(broker.bootstrap_servers, "metrics", BAD_MESSAGES)
        started = time.monotonic()
        job = submit_job(broker.bootstrap_servers, work)
        elapsed = time.monotonic() - started
        if job.returncode != 0:
            print(f"demo: the job failed (exit {job.returncode})", file=sys.stderr)
            return job.returncode
        results = consume_all(broker.bootstrap_servers, "anomalies", timeout_s=30)
        dead = consume_all(broker.bootstrap_servers, "metrics-dead-letters", timeout_s=30)
        notes, notified = run_notifications(broker.bootstrap_servers, work, stream.anomalies, args.judge, WINDOW_MS)
    table, all_found = summarize(work / "anomalies.db", stream.anomalies, args.judge)
    print()
    print(table)
    print()
    print("\n".join(notes))
    print()
    reasons: dict[str, int] = {}
    for record in dead:
        reason = (record.header("anomaly.reason") or b"?").decode()
        reasons[reason] = reasons.get(reason, 0) + 1
    print(
        f"job ran {elapsed:.0f} s; {len(results):,} results on topic 'anomalies', "
        f"{len(dead)} dead letters on 'metrics-dead-letters' "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(reasons.items()))})"
    )
    print(f"results table: {work / 'anomalies.db'} (table predictions)")
    report = work / "report.html"
    try:
        from tools.report import write_report
        from tools.repository import ResultsRepository

        write_report(ResultsRepository(f"jdbc:sqlite:{work / 'anomalies.db'}"), report, title="Demo: anomalies found")
        print(f"report: {report} (open it in a browser; works offline)")
        print(f"dashboard: python -m tools.dashboard --jdbc jdbc:sqlite:{work / 'anomalies.db'}")
    except ImportError as err:  # the dashboard extra is not installed
        print(f"report: skipped ({err}; pip install -e '.[dashboard]')")
    print("the last windows of each application stay open: the watermark has not passed them yet")
    if not notified:
        print("demo: an incident's notification was lost or came twice (see above)", file=sys.stderr)
        return 1
    if not all_found:
        print(f"demo: detector {args.judge!r} MISSED an injected anomaly or raised more than "
              f"{MAX_FALSE_ALARMS} false alarm in an application", file=sys.stderr)
        return 1
    print(f"demo: every injected anomaly was found by detector {args.judge!r}, "
          f"with at most {MAX_FALSE_ALARMS} false alarm per application")
    return 0


if __name__ == "__main__":
    sys.exit(main())
