"""Restart safety: SIGKILL the running job again and again, restart it from its checkpoint each time.

The job runs as a subprocess (``python -m jobs.main --config ...``) in its own process group, so a
SIGKILL takes down the driver's Python, its JVM and Spark's Python workers at once -- as a crashed
container would. The kills land

* at the fault points of ``jobs/sinks.py`` (``before_kafka``, ``after_kafka`` -- between the Kafka
  and the JDBC write --, ``after_jdbc`` -- after the upsert, before Spark's commit file);
* right after a batch's offsets file is written (the batch is planned, nothing is committed);
* while the state store uploads a new version (a checkpoint commit in progress), and right after a
  batch's commit file appears;
* at seeded random moments while micro-batches run;

one kill of each kind per run of the suite (``ANOMALY_LONG_TESTS=1``: 11 kills, and 10 against
PostgreSQL). In one of the killed runs the broker stops for ``OUTAGE_S`` first, longer than the Kafka
clients' own request timeouts: the job must ride it out (no exit, batches again afterwards), since its
``kafka_timeout_millis`` are longer; another run, with ``kafka_timeout_millis`` shorter than the same
outage, must fail by itself -- a restart resumes from the checkpoint like after a kill.

Then a final ``--available-now`` run completes, and the JDBC table must equal, row for row and bit for
bit, the table of an uninterrupted run over the same input. The Kafka output topic may hold
duplicates (at-least-once), but every key must always carry the same value.

A second test does the same with the results in PostgreSQL (fixture ``postgres``), with kills also
inside the JDBC write: while the merge transaction is open (the ``during_jdbc_merge`` fault point of
``jobs/jdbc.py``) and as soon as the batch's rows are visible in the staging table. Its table, shaped
as SQLite holds it, must equal the uninterrupted SQLite run's, every float bit for bit.

The input is one partition, in event-time order, with no event behind the watermark, so the results do
not depend on where micro-batches start and end (see ``stream_messages``).

Deselect with ``-m "not restart_safety"``; ``ANOMALY_RESTART_SEED`` changes the kill schedule.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import yaml

from jobs.workdir import usage
from tests.lanes import LONG_TESTS
from tests.stream_harness import msg
from tools.cluster import descendants, process_alive
from tools.synthetic import consume_all, produce_messages

pytestmark = pytest.mark.restart_safety

REPO = Path(__file__).resolve().parent.parent
APPS = ("web", "db", "api")
STEP_S = 10
POINTS_PER_APP = 160  # 480 events + bad ones, 20 per batch: ~25 micro-batches
MAX_OFFSETS = 20
# the killed runs' shuffle partitions: one Python worker to start per run (the larger part of a run's
# first batch on 2 cores); the reference has two, so the table is also checked not to depend on them.
# The long soak kills runs with two, where a kill can land between the two state stores' commits
KILLED_PARTITIONS = 2 if LONG_TESTS else 1
FINAL_MAX_OFFSETS = 250  # the runs that are not killed: the reference and the last run of each test
WINDOW_MS = 60_000
LATENESS_MS = 30_000
DETECTORS = [
    {"name": "ema", "params": {"window": 5, "warmup": 3}},
    {"name": "robust", "params": {"window": 8, "warmup": 3}},
    {"name": "cad"},
]
BAD = [
    b"{not json",
    b'{"application": "web", "value": "12", "ts": "2024-01-01T00:00:00Z"}',
    b'{"application": "web", "value": 1}',
    b'{"application": "", "value": 1, "ts": "2024-01-01T00:00:00Z"}',
]
TABLE_COLUMNS = (
    "application, detector, agg_function, agg_window_millis, ts, "
    "agg_value, value_lower_limit, value_upper_limit, anomaly_probability, is_anomaly"
)
SEED = int(os.environ.get("ANOMALY_RESTART_SEED", "20240101"))
FAULT_POINTS = ("before_kafka", "after_kafka", "after_jdbc")
# every kind once; "random" first: its run also rides out the broker outage (the input is fresh then),
# "outage_exit" is the run that fails by itself during an outage longer than its kafka_timeout_millis
KINDS = ("random", "offsets", "after_kafka", "state", "before_kafka", "outage_exit", "after_jdbc", "commit")
LONG_KINDS = ("random", "offsets", "after_kafka", "random", "state", "outage_exit", "before_kafka", "random")
LONG_KINDS += ("after_jdbc", "offsets", "commit", "state")
KILLS = int(os.environ.get("ANOMALY_RESTART_KILLS", "11" if LONG_TESTS else "7"))
START_TIMEOUT_S = 180
# The outage: longer than the Kafka clients' own request timeouts (set to REQUEST_TIMEOUT_MS here, 30 s
# by default), shorter than the kafka_timeout_millis of the run that rides it out (RIDE_TIMEOUT_MS),
# longer than that of the run that must fail (EXIT_TIMEOUT_MS). The long soak uses the job's defaults
# (10 minutes) and 130 s, longer than the clients' default timeouts that failed the query after 120 s
# (the producer's delivery.timeout.ms; measured). ANOMALY_RESTART_BROKER_DOWN_S=310: a 5-minute outage.
OUTAGE_S = float(os.environ.get("ANOMALY_RESTART_BROKER_DOWN_S", "130" if LONG_TESTS else "15"))
REQUEST_TIMEOUT_MS = 5_000
RIDE_TIMEOUT_MS = None if LONG_TESTS else 60_000  # None: the job's defaults, the Kafka clients' request timeouts
EXIT_TIMEOUT_MS = 4_000
EXIT_REQUEST_TIMEOUT_MS = 3_000
EXIT_WAIT_S = 90


# --------------------------------------------------------------------------- input and config


def stream_messages() -> list[dict | bytes]:
    """All applications interleaved in event-time order, a few bad messages in between.

    One partition and no event older than an earlier one: every event is ahead of the watermark
    (max event time seen - lateness), so none is late whatever the batch boundaries are, and every
    window is closed with all of its events.
    """
    rng = np.random.default_rng(7)
    base = {"web": 100.0, "db": 40.0, "api": 250.0}
    out: list[dict | bytes] = []
    for i in range(POINTS_PER_APP):
        t = i * STEP_S
        for app in APPS:
            value = base[app] * (1 + 0.05 * math.sin(t / 900.0)) + rng.normal(0, 0.02 * base[app])
            if app == "web" and 600 <= t < 720:
                value += 0.8 * base[app]  # a spike over two windows
            if app == "db" and t >= 1200:
                value += 0.4 * base[app]  # a level shift
            out.append(msg(app, round(float(value), 4), t))
        if i % 40 == 17:
            out.append(BAD[(i // 40) % len(BAD)])
    return out


def write_config(
    path: Path,
    work: Path,
    bootstrap: str,
    name: str,
    *,
    trigger: str,
    detectors=DETECTORS,
    jdbc: dict | None = None,
    max_offsets: int = MAX_OFFSETS,
    partitions: int = 2,
    kafka_timeouts: tuple[int, int] | None = None,
) -> Path:
    """The job's config; ``jdbc`` replaces the default SQLite table ``results.db`` in ``work``;
    ``kafka_timeouts`` = (the Kafka clients' request.timeout.ms, the job's kafka_timeout_millis)."""
    timeouts: dict = {}
    if kafka_timeouts is not None:
        request_ms, timeout_ms = kafka_timeouts
        timeouts = {"kafka_timeout_millis": timeout_ms, "kafka_options": {"kafka.request.timeout.ms": str(request_ms)}}
    raw = {
        "checkpoint_dir": str(work / "checkpoints"),
        "trigger": trigger,
        "trigger_interval": "500 milliseconds",
        "spark_conf": {
            "spark.sql.shuffle.partitions": str(partitions),
            "spark.default.parallelism": str(partitions),
            "spark.ui.enabled": "false",
            # short-lived drivers: C1-only JIT and the serial GC start faster on a small machine
            "spark.driver.extraJavaOptions": (
                f"-Dlog4j2.configurationFile={REPO / 'conf' / 'log4j2.properties'} "
                "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
            ),
        },
        "streams": [
            {
                "name": "chaos",
                "source": {
                    "bootstrap_servers": bootstrap,
                    "topics": [f"{name}-in"],
                    "max_offsets_per_trigger": max_offsets,
                    **timeouts,
                },
                "aggregation": {
                    "agg_function": "avg",
                    "agg_window_millis": WINDOW_MS,
                    "allowed_lateness_millis": LATENESS_MS,
                },
                "detectors": detectors,
                "sinks": {
                    "output_topic": f"{name}-out",
                    "dead_letter_topic": f"{name}-dlq",
                    "jdbc": jdbc or {"url": f"jdbc:sqlite:{work / 'results.db'}", "table": "predictions"},
                    "incidents_topic": f"{name}-incidents",
                    **copy.deepcopy(timeouts),
                },
            }
        ],
    }
    path.write_text(yaml.safe_dump(raw))
    return path


# --------------------------------------------------------------------------- process handling


class Job:
    """One run of ``python -m jobs.main`` in its own process group (the group dies with one killpg)."""

    def __init__(self, config: Path, log: Path, *, available_now: bool = False, env: dict | None = None) -> None:
        cmd = [sys.executable, "-m", "jobs.main", "--config", str(config)]
        if available_now:
            cmd.append("--available-now")
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group, then any descendant that left it (Spark's Python daemon
        starts its own group); wait until every one of them is gone."""
        family = descendants(self.proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(30)
        self._out.close()
        deadline = time.monotonic() + 30
        while any(process_alive(p) for p in family) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [p for p in family if process_alive(p)]
        assert not left, f"processes survived SIGKILL: {left}"

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.alive():
                self.kill()
            self._out.close()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def temp_files_older_than(temp_dir: Path, since: float) -> list[str]:
    """Files in the job's temp dir (jobs/workdir.py) last written before ``since`` (its lock file aside)."""
    out = []
    for path in temp_dir.rglob("*") if temp_dir.is_dir() else []:
        with contextlib.suppress(OSError):
            if path.is_file() and path.name != ".lock" and path.stat().st_mtime < since:
                out.append(str(path.relative_to(temp_dir)))
    return out


def batch_ids(directory: Path) -> set[int]:
    if not directory.is_dir():
        return set()
    return {int(p.name) for p in directory.iterdir() if p.name.isdigit()}


def state_files(checkpoint: Path) -> set[str]:
    """Files of the state store checkpoint (changelogs, snapshots, their temporary files while
    they are being uploaded), as relative paths."""
    state = checkpoint / "state"
    if not state.is_dir():
        return set()
    return {str(p.relative_to(state)) for p in state.rglob("*") if not p.name.endswith(".crc")}


def wait_for(condition, job: Job, timeout: float = START_TIMEOUT_S, poll: float = 0.005) -> bool:
    """Poll ``condition`` until it holds (True); False if the job died or the time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if not job.alive():
            return False
        time.sleep(poll)
    return False


# --------------------------------------------------------------------------- results


def fault_env(how: str, committed: set[int], marker: Path, rng: random.Random, ahead: tuple[int, ...]) -> dict:
    """Environment that stops the job at fault point ``how`` (jobs/faults.py) in the run's first batch plus
    an offset drawn from ``ahead``; ``during_jdbc_merge`` has no batch id and stops at the run's first merge
    (the draw is made anyway, so a seed keeps its schedule)."""
    marker.unlink(missing_ok=True)
    batch = max(committed, default=-1) + 1 + rng.choice(ahead)
    return {
        "ANOMALY_FAULT_POINT": how,
        "ANOMALY_FAULT_BATCH": "" if how == "during_jdbc_merge" else str(batch),
        "ANOMALY_FAULT_MARKER": str(marker),
    }


def reach_kill_point(
    how: str,
    job: Job,
    checkpoint: Path,
    marker: Path,
    planned: set[int],
    committed: set[int],
    rng: random.Random,
    random_wait_s: float,
) -> bool:
    """Wait until the running job is at the moment ``how``; False if it never came."""
    if how in (*FAULT_POINTS, "during_jdbc_merge"):
        return wait_for(marker.exists, job, poll=0.05)
    if how == "offsets":  # a new batch is planned, not yet committed
        return wait_for(lambda: batch_ids(checkpoint / "offsets") - planned - batch_ids(checkpoint / "commits"), job)
    if how == "state":  # the state store is writing a new version
        before = state_files(checkpoint)
        return wait_for(lambda: state_files(checkpoint) - before, job, poll=0.002)
    if how == "commit":  # a batch's commit file just appeared
        return wait_for(lambda: batch_ids(checkpoint / "commits") - committed, job, poll=0.002)
    assert how == "random", how  # once the driver plans batches, within the next random_wait_s seconds
    hit = wait_for(lambda: batch_ids(checkpoint / "offsets") - planned, job, poll=0.05)
    if hit:
        time.sleep(rng.uniform(0.0, random_wait_s))
    return hit


def kill_label(how: str, checkpoint: Path) -> str:
    """``"after_kafka@7*"``: killed in batch 7 (the last planned); ``*``: its commit file was not written."""
    last = max(batch_ids(checkpoint / "offsets"), default=-1)
    return f"{how}@{last}{'' if last in batch_ids(checkpoint / 'commits') else '*'}"


def run_to_end(config: Path, spark) -> None:
    """A last ``--available-now`` run from the killed runs' checkpoint, in the session's SparkSession (nothing
    is killed in it, and each killed run was already a restart in a driver of its own): it must consume the
    rest and end with exit code 0."""
    from dataclasses import replace

    from jobs.config import load_config
    from jobs.main import run

    job = replace(load_config(config), trigger="available_now")
    assert run(job, spark=spark) == 0, "the final run failed: see the test's log"


def table_rows(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(f"SELECT {TABLE_COLUMNS} FROM predictions ORDER BY 1, 2, 3, 4, 5").fetchall()
    finally:
        con.close()


def incident_rows(db: Path) -> list[list[tuple]]:
    """The incident tables (incidents/), every column, in key order."""
    con = sqlite3.connect(db)
    try:
        return [con.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in ("incidents", "incident_events")]
    finally:
        con.close()


def check_incident_topic(records, events: list[tuple]) -> None:
    """A record may repeat, never under another key or sequence number: one value per (key, seq), and
    the records are the incident_events rows."""
    by_key: dict[tuple, set[bytes]] = defaultdict(set)
    for r in records:
        by_key[(r.key.decode(), json.loads(r.value)["seq"])].add(r.value)
    assert all(len(v) == 1 for v in by_key.values()), "an incident record changed on replay"
    assert set(by_key) == {(e[0], e[1]) for e in events}


def check_output_topic(records) -> tuple[dict[bytes, bytes], int]:
    """{key: value} of the output topic, and how many records repeated a key; asserts that a repeated
    key always carries the same value and that the key names the row it carries."""
    by_key: dict[bytes, set[bytes]] = defaultdict(set)
    for r in records:
        by_key[r.key].add(r.value)
    changed = {k: v for k, v in by_key.items() if len(v) > 1}
    assert not changed, f"{len(changed)} keys carry different values, e.g. {next(iter(changed.items()))}"
    out = {k: next(iter(v)) for k, v in by_key.items()}
    for key, value in out.items():
        message, fields = json.loads(value), json.loads(key)
        assert fields == {k: message[k] for k in fields}, (key, value)
    return out, len(records) - len(out)


class Reference(NamedTuple):
    rows: list[tuple]  # the JDBC table of an uninterrupted run
    output: dict[bytes, bytes]  # its output topic, {key: value}
    dead_letters: set[bytes]  # the values on its dead-letter topic
    incidents: list[list[tuple]]  # its incidents and incident_events tables


def uninterrupted_run(kafka_broker, work: Path, spark) -> Reference:
    """One uninterrupted --available-now run over the input (topic ``rs-ref-in``) in ``spark``: the session
    fixture ``reference`` (tests/conftest.py), shared with the cluster tests (same input, same config; the
    job's code is the same in a driver of its own, and the table does not depend on the session's
    shuffle partitions, which the killed runs' differ from)."""
    from jobs.config import load_config
    from jobs.main import run

    bootstrap = kafka_broker.bootstrap_servers
    kafka_broker.create_topic("rs-ref-in", partitions=1)
    for topic in ("rs-ref-out", "rs-ref-dlq"):
        kafka_broker.create_topic(topic, partitions=2)
    produce_messages(bootstrap, "rs-ref-in", stream_messages())
    # large batches: the killed runs' 20-message batches must give the same table (no event is late,
    # whatever the batch boundaries), and two batches instead of 25 save half a minute
    config = write_config(
        work / "job.yaml", work, bootstrap, "rs-ref", trigger="available_now", max_offsets=FINAL_MAX_OFFSETS
    )
    assert run(load_config(config), spark=spark) == 0, "the reference run failed: see the test's log"
    rows = table_rows(work / "results.db")
    assert len(rows) > 100
    output, duplicates = check_output_topic(consume_all(bootstrap, "rs-ref-out"))
    assert duplicates == 0 and len(output) == len(rows)
    dead_letters = {r.value for r in consume_all(bootstrap, "rs-ref-dlq")}
    assert dead_letters == set(BAD)
    incidents = incident_rows(work / "results.db")
    assert incidents[0] and incidents[1]  # the spike and the level shift opened incidents
    return Reference(rows, output, dead_letters, incidents)


def input_topics(broker, name: str) -> None:
    """``<name>-in`` with the reference's input, empty ``<name>-out`` and ``<name>-dlq``."""
    broker.create_topic(f"{name}-in", partitions=1)
    for suffix in ("out", "dlq"):
        broker.create_topic(f"{name}-{suffix}", partitions=2)
    produce_messages(broker.bootstrap_servers, f"{name}-in", stream_messages())


def compare(
    reference: Reference, work: Path, bootstrap: str, name: str, rows: list[tuple] | None = None
) -> dict[str, int]:
    """Assert that the run's table (``rows``, else its SQLite table in ``work``) and topics match the
    reference; return the figures."""
    got = table_rows(work / "results.db") if rows is None else rows
    expected = reference.rows
    keys = [row[:5] for row in got]
    expected_keys = {row[:5] for row in expected}
    figures = {
        "rows": len(got),
        "lost": len(expected_keys - set(keys)),
        "extra": len(set(keys) - expected_keys),
        "duplicated": len(keys) - len(set(keys)),
        "differing": sum(1 for e, g in zip(expected, got, strict=False) if e != g),
    }
    out, figures["topic_duplicates"] = check_output_topic(consume_all(bootstrap, f"{name}-out"))
    figures["topic_records"] = len(out) + figures["topic_duplicates"]
    dlq = Counter(r.value for r in consume_all(bootstrap, f"{name}-dlq"))
    figures["dead_letters"] = sum(dlq.values())
    assert (figures["lost"], figures["extra"], figures["duplicated"]) == (0, 0, 0), figures
    differing = [(e, g) for e, g in zip(expected, got, strict=False) if e != g]
    assert got == expected, f"first differing row (reference, run): {differing[:1]}"  # all columns, exact floats
    assert out == reference.output  # same keys, same values as the uninterrupted run's topic
    assert set(dlq) == reference.dead_letters  # every bad message dead-lettered, at least once
    if rows is None:  # the incident tables and topic, the same way
        assert incident_rows(work / "results.db") == reference.incidents
        check_incident_topic(consume_all(bootstrap, f"{name}-incidents"), reference.incidents[1])
    return figures


# --------------------------------------------------------------------------- the tests


def ride_out_outage(broker, job: Job, commits: Path, committed: set[int]) -> str:
    """Stop the broker for OUTAGE_S once the run committed a batch; the job must stay up through it and
    commit batches again afterwards, without a restart. Returns the figures."""
    assert wait_for(lambda: batch_ids(commits) - committed, job, timeout=300, poll=0.1), job.tail()
    last_before = max(batch_ids(commits))
    broker.stop()
    stopped = time.monotonic()
    try:
        while time.monotonic() - stopped < OUTAGE_S:
            assert job.alive(), f"the job exited {time.monotonic() - stopped:.0f} s into the outage:\n{job.tail()}"
            time.sleep(0.2)
    finally:
        broker.start()
    during = max(batch_ids(commits)) - last_before  # at most the batch in flight when the broker stopped
    assert during <= 1, f"{during} batches committed while the broker was down: did the outage reach the job?"
    back = time.monotonic()
    assert wait_for(lambda: max(batch_ids(commits)) >= last_before + during + 2, job, timeout=400, poll=0.1), (
        f"no progress after the outage:\n{job.tail()}"
    )
    return (
        f"broker down {OUTAGE_S:.0f} s after batch {last_before} (kafka_timeout_millis "
        f"{RIDE_TIMEOUT_MS or 'default'}, request.timeout.ms {REQUEST_TIMEOUT_MS if RIDE_TIMEOUT_MS else 'default'}): "
        f"still running, 2 batches committed {time.monotonic() - back:.0f} s after it came back"
    )


def fail_in_outage(broker, job: Job, commits: Path, committed: set[int]) -> str:
    """Stop the broker for OUTAGE_S once the run (kafka_timeout_millis EXIT_TIMEOUT_MS) committed a batch:
    the query must fail and the job exit non-zero while the broker is down (given up to EXIT_WAIT_S on a
    busy machine). Returns the figures."""
    assert wait_for(lambda: batch_ids(commits) - committed, job, timeout=300, poll=0.1), job.tail()
    broker.stop()
    stopped = time.monotonic()
    try:
        while job.alive() and time.monotonic() - stopped < max(OUTAGE_S, EXIT_WAIT_S):
            time.sleep(0.2)
        exited_after = time.monotonic() - stopped
        still_running = job.alive()
        code = None if still_running else job.wait(10)
        if still_running:
            job.kill()
    finally:
        broker.start()
    failure = [line for line in job.log.read_text(errors="replace").splitlines() if "failed:" in line]
    assert code not in (None, 0) and failure, f"the job did not fail in a {OUTAGE_S:.0f} s outage:\n{job.tail()}"
    return f"kafka_timeout_millis {EXIT_TIMEOUT_MS}: exit {code} {exited_after:.0f} s into the outage"


@pytest.mark.timeout(1500)
def test_sigkill_at_random_and_targeted_moments_gives_the_uninterrupted_table(
    kafka_broker, reference, spark, driver_class_archive, tmp_path
):
    started = time.monotonic()
    bootstrap = kafka_broker.bootstrap_servers
    input_topics(kafka_broker, "rs")

    # -- 1. the reference's input, killed again and again ------------------------------------------
    work = tmp_path / "killed"
    work.mkdir()
    killed = {"trigger": "processing_time", "partitions": KILLED_PARTITIONS}
    config = write_config(work / "job.yaml", work, bootstrap, "rs", **killed)
    # the first run rides out the outage, "outage_exit" fails in one (see OUTAGE_S)
    ride = None if RIDE_TIMEOUT_MS is None else (REQUEST_TIMEOUT_MS, RIDE_TIMEOUT_MS)
    ride_config = write_config(work / "ride.yaml", work, bootstrap, "rs", kafka_timeouts=ride, **killed)
    exit_timeouts = (EXIT_REQUEST_TIMEOUT_MS, EXIT_TIMEOUT_MS)
    exit_config = write_config(work / "exit.yaml", work, bootstrap, "rs", kafka_timeouts=exit_timeouts, **killed)
    checkpoint = work / "checkpoints" / "chaos"
    marker = work / "fault.marker"
    rng = random.Random(SEED)
    kinds = LONG_KINDS if LONG_TESTS else KINDS
    schedule = [kind for kind in kinds if kind != "outage_exit"]
    schedule = [schedule[i % len(schedule)] for i in range(KILLS)]
    schedule.insert(min(kinds.index("outage_exit"), len(schedule)), "outage_exit")
    kills: list[str] = []
    outages: list[str] = []
    in_use: list[int] = []  # bytes in the job's temp dir at each kill
    left: list[int] = []  # ... and right after it
    rocksdb_left = False
    job = None
    try:
        for i, how in enumerate(schedule):
            job = None
            committed = batch_ids(checkpoint / "commits")
            planned = batch_ids(checkpoint / "offsets")
            # a fault point: in the run's first batch (a replay when the last kill left it uncommitted)
            # or the one after
            env = fault_env(how, committed, marker, rng, (0, 0, 1)) if how in FAULT_POINTS else {}
            run_started = time.time() - 1  # file times have a coarse grain on some file systems
            run_config = exit_config if how == "outage_exit" else ride_config if i == 0 else config
            job = Job(run_config, work / f"run-{i:02d}.log", env=env)
            if how == "outage_exit":
                outages.append(fail_in_outage(kafka_broker, job, checkpoint / "commits", committed))
                continue
            if i == 0:
                outages.append(ride_out_outage(kafka_broker, job, checkpoint / "commits", committed))
                committed, planned = batch_ids(checkpoint / "commits"), batch_ids(checkpoint / "offsets")
            hit = reach_kill_point(how, job, checkpoint, marker, planned, committed, rng, random_wait_s=10.0)
            assert job.alive(), f"run {i} ({how}) exited {job.proc.returncode}:\n{job.tail()}"
            assert hit, f"run {i} ({how}): the kill point never came:\n{job.tail()}"
            # the job's temp dir holds this run's files only: what the killed runs left was removed
            older = temp_files_older_than(work / "tmp", run_started)
            assert not older, f"run {i}: files left by earlier runs in the temp dir: {older[:5]}"
            in_use.append(usage(work / "tmp"))
            job.kill()
            kills.append(kill_label(how, checkpoint))
            left.append(usage(work / "tmp"))
            rocksdb_left |= any((work / "tmp" / "jvm").glob("librocksdbjni*"))
    finally:
        if job is not None and job.alive():
            job.kill()

    # -- 2. a last run consumes the rest in large batches and stops ---------------------------------
    final_config = write_config(work / "final.yaml", work, bootstrap, "rs", max_offsets=FINAL_MAX_OFFSETS, **killed)
    run_to_end(final_config, spark)

    figures = compare(reference, work, bootstrap, "rs")
    print(
        f"\nrestart safety (seed {SEED}): {len(kills)} SIGKILLs survived ({', '.join(kills)}; * = mid-batch); "
        f"{figures['rows']} table rows compared with the uninterrupted run's {len(reference.rows)}: "
        f"lost {figures['lost']}, extra {figures['extra']}, duplicated {figures['duplicated']}, "
        f"differing {figures['differing']}; output topic {figures['topic_records']} records for "
        f"{len(reference.output)} keys ({figures['topic_duplicates']} duplicates, every key with one value); "
        f"{figures['dead_letters']} dead letters for {len(BAD)} bad messages; {time.monotonic() - started:.0f} s"
    )
    print(
        f"temp dir: {sum(left[:3]) / 1e6:.1f} MB left by the first 3 kills "
        f"({', '.join(f'{b / 1e6:.1f}' for b in left[:3])}); "
        f"in use by the restarted run: {in_use[3] / 1e6:.1f} MB (at each kill: "
        f"{', '.join(f'{b / 1e6:.1f}' for b in in_use)} MB)"
    )
    print(f"broker outages: {'; '.join(outages)}")
    assert [k.split("@")[0] for k in kills] == [how for how in schedule if how != "outage_exit"]
    assert len(outages) == 2
    # a SIGKILL leaves the JVM's temp files (RocksDB's native library) in the job's temp dir, not in /tmp
    assert rocksdb_left
    # after 3 kills and a restart, one run's worth: no more than the most a single run left behind
    assert in_use[3] <= max(left[:3]) * 1.25, (in_use, left)


# --------------------------------------------------------------------------- the same against PostgreSQL

PG_PASSWORD_ENV = "ANOMALY_RESTART_PG_PASSWORD"
PG_TABLE = "predictions_restart"
PG_STAGING = f"{PG_TABLE}_staging_chaos"  # JdbcTable's staging table of the stream "chaos"
# 2 by default: the two JDBC-side kills the SQLite test cannot reach (each run starts a Spark driver:
# ~20 s; the replay of a batch PostgreSQL committed is tests/test_postgres_sink.py's); the long soak (10)
# adds the SQLite test's kinds
PG_KILLS = int(os.environ.get("ANOMALY_RESTART_PG_KILLS", "10" if LONG_TESTS else "2"))
# the inside of the JDBC write: "during_jdbc_merge" stops the driver inside the merge transaction (the
# merge and the DELETE of staging are done, not committed; jobs/jdbc.py), "staging" kills as soon as
# another session sees the batch's rows in the staging table (Spark's writer committed them)
# (the first batches emit no window yet: a merge first happens in batch 2)
PG_SCHEDULE = ("during_jdbc_merge", "staging", "after_jdbc", "after_kafka", "random")
PG_SCHEDULE += ("offsets", "commit", "during_jdbc_merge", "before_kafka", "state", "staging")
# the last run reads the rest in bigger batches (fewer of them: faster); the result does not depend on
# where batches end (see stream_messages), and a restart with another maxOffsetsPerTrigger is allowed
# one shuffle partition (the reference has two): one Python worker to start per run instead of two, on a
# small machine the larger part of a run's first batch; results are per application, not per partition
PG_PARTITIONS = int(os.environ.get("ANOMALY_RESTART_PG_PARTITIONS", "1"))


class PgProbe:
    """A session of the job's role, in autocommit: each query sees what other sessions committed."""

    def __init__(self, postgres) -> None:
        import psycopg

        self.errors = psycopg.errors
        self.conn = psycopg.connect(**postgres.connect_params, autocommit=True)

    def close(self) -> None:
        self.conn.close()

    def staging_rows(self) -> int:
        """Committed rows in the staging table (0 before the job created it)."""
        try:
            return self.conn.execute(f"SELECT count(*) FROM {PG_STAGING}").fetchone()[0]
        except self.errors.UndefinedTable:
            return 0

    def open_transactions(self) -> list[tuple[str, str]]:
        """(state, last statement) of the role's other sessions in this database that are inside a transaction."""
        return self.conn.execute(
            "SELECT state, query FROM pg_stat_activity WHERE datname = current_database() AND usename = current_user "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
        ).fetchall()

    def table_rows(self) -> list[tuple]:
        """The result table shaped as the SQLite table holds it (``ts`` as ISO-8601 UTC text with
        milliseconds, ``is_anomaly`` 0/1), in the reference's order."""
        out = []
        for *key, ts, agg, lower, upper, probability, flag in self.conn.execute(
            f"SELECT {TABLE_COLUMNS} FROM {PG_TABLE}"
        ).fetchall():
            assert ts.utcoffset() is not None and ts.microsecond % 1000 == 0, ts
            assert isinstance(flag, bool), flag
            utc = ts.astimezone(timezone.utc)
            iso = f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"
            out.append((*key, iso, agg, lower, upper, probability, int(flag)))
        return sorted(out, key=lambda row: row[:5])


@pytest.fixture
def pg_probe(postgres) -> Iterator[PgProbe]:
    probe = PgProbe(postgres)
    yield probe
    probe.close()


def float_bits(rows: list[tuple]) -> list[tuple]:
    """Rows with each float as its 8 IEEE bytes: -0.0 differs from 0.0, NaN equals the same NaN."""
    return [tuple(struct.pack(">d", v) if isinstance(v, float) else v for v in row) for row in rows]


@pytest.mark.timeout(900)
def test_sigkill_with_postgresql_sink_gives_the_uninterrupted_table(
    postgres, pg_probe, kafka_broker, reference, spark, driver_class_archive, tmp_path, monkeypatch
):
    """The SIGKILL test above with the results in PostgreSQL, including kills inside the JDBC write: rows
    in the staging table, the merge transaction open. The table must equal the uninterrupted (SQLite)
    run's, every float bit for bit."""
    started = time.monotonic()
    bootstrap = kafka_broker.bootstrap_servers
    input_topics(kafka_broker, "rspg")
    probe = pg_probe
    probe.conn.execute(f"DROP TABLE IF EXISTS {PG_TABLE}, {PG_STAGING}")
    jdbc = {"url": postgres.jdbc_url, "table": PG_TABLE, "user": postgres.user, "password_env": PG_PASSWORD_ENV}
    config = write_config(
        tmp_path / "job.yaml",
        tmp_path,
        bootstrap,
        "rspg",
        trigger="processing_time",
        jdbc=jdbc,
        partitions=PG_PARTITIONS,
    )
    checkpoint = tmp_path / "checkpoints" / "chaos"
    marker = tmp_path / "fault.marker"
    rng = random.Random(SEED)
    kills: list[str] = []
    in_staging: list[int] = []  # rows in the staging table at each kill inside the JDBC write
    job = None
    try:
        for i in range(PG_KILLS):
            how = PG_SCHEDULE[i % len(PG_SCHEDULE)]
            job = None
            committed = batch_ids(checkpoint / "commits")
            planned = batch_ids(checkpoint / "offsets")
            env = {PG_PASSWORD_ENV: postgres.password}
            if how in (*FAULT_POINTS, "during_jdbc_merge"):
                env |= fault_env(how, committed, marker, rng, (0, 1))  # the run's first batch or the one after
            job = Job(config, tmp_path / f"run-{i:02d}.log", env=env)
            if how == "staging":  # between Spark's staging write and the merge's commit
                # rows a kill left in staging do not count: the job must empty it, then write this batch
                emptied = [False]

                def fresh_rows_in_staging(emptied=emptied) -> bool:
                    rows = probe.staging_rows()
                    emptied[0] = emptied[0] or rows == 0
                    return emptied[0] and rows > 0

                hit = wait_for(fresh_rows_in_staging, job, poll=0.002)
                merge_open = bool(probe.open_transactions())
            else:
                hit = reach_kill_point(how, job, checkpoint, marker, planned, committed, rng, random_wait_s=3.0)
            assert job.alive(), f"run {i} ({how}) exited {job.proc.returncode}:\n{job.tail()}"
            assert hit, f"run {i} ({how}): the kill point never came:\n{job.tail()}"
            if how == "during_jdbc_merge":
                # the merge ran and emptied staging inside its transaction; others still see the rows
                open_merges = [q for state, q in probe.open_transactions() if state == "idle in transaction"]
                assert open_merges == [f"DELETE FROM {PG_STAGING}"], probe.open_transactions()
                staged = probe.staging_rows()
                assert staged > 0, "the merge transaction is open but staging holds no rows"
            job.kill()
            if how == "staging":  # "staging+merge": the merge transaction was open too
                how += "+merge" if merge_open else ""
            kills.append(kill_label(how, checkpoint))
            if how.startswith(("during_jdbc_merge", "staging")):
                # the killed session's transaction is rolled back: its DELETE too, the rows stay in staging
                deadline = time.monotonic() + 30
                while probe.open_transactions() and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert not probe.open_transactions(), probe.open_transactions()
                in_staging.append(probe.staging_rows())
                assert in_staging[-1] > 0, f"kill {i} ({how}): staging empty after the kill"
                if how == "during_jdbc_merge":
                    assert in_staging[-1] == staged, (staged, in_staging[-1])
    finally:
        if job is not None and job.alive():
            job.kill()

    final_config = write_config(
        tmp_path / "final.yaml",
        tmp_path,
        bootstrap,
        "rspg",
        trigger="available_now",
        jdbc=jdbc,
        max_offsets=FINAL_MAX_OFFSETS,
        partitions=PG_PARTITIONS,
    )
    monkeypatch.setenv(PG_PASSWORD_ENV, postgres.password)
    run_to_end(final_config, spark)
    got = probe.table_rows()
    assert probe.staging_rows() == 0  # the last merge emptied it; the rows the kills left are gone
    assert not probe.open_transactions()
    figures = compare(reference, tmp_path, bootstrap, "rspg", rows=got)
    assert float_bits(got) == float_bits(reference.rows)
    print(
        f"\nrestart safety, PostgreSQL (seed {SEED}): {len(kills)} SIGKILLs survived ({', '.join(kills)}; "
        f"* = mid-batch); {len(in_staging)} inside the JDBC write with {in_staging} rows left in staging; "
        f"{figures['rows']} PostgreSQL rows compared with the uninterrupted run's {len(reference.rows)}: "
        f"lost {figures['lost']}, extra {figures['extra']}, duplicated {figures['duplicated']}, "
        f"differing {figures['differing']} (floats bit for bit); output topic {figures['topic_records']} records "
        f"for {len(reference.output)} keys ({figures['topic_duplicates']} duplicates); "
        f"{figures['dead_letters']} dead letters; {time.monotonic() - started:.0f} s"
    )
    assert len(kills) >= min(PG_KILLS, 10)
    assert PG_KILLS < 1 or in_staging, "no kill landed inside the JDBC write"


@pytest.mark.timeout(900)
def test_restart_with_changed_detector_params_is_refused_and_a_new_label_resumes(
    kafka_broker, spark, tmp_path, capsys
):
    """The job's runs in the session's SparkSession (no driver to start: this is about the checkpoint's
    fingerprint, not about kills); the refused start through ``main`` as from the command line: the
    refusal comes before Spark is touched."""
    from jobs.config import load_config
    from jobs.main import main, run

    bootstrap = kafka_broker.bootstrap_servers
    kafka_broker.create_topic("cm-in", partitions=1)
    for topic in ("cm-out", "cm-dlq"):
        kafka_broker.create_topic(topic, partitions=2)
    first = [m for m in stream_messages() if isinstance(m, dict)][:90]  # 5 minutes of 3 applications
    produce_messages(bootstrap, "cm-in", first)
    detectors = [{"name": "ema", "params": {"window": 5, "warmup": 3}}]

    def config(name: str, detectors: list) -> Path:
        return write_config(
            tmp_path / f"{name}.yaml",
            tmp_path,
            bootstrap,
            "cm",
            trigger="available_now",
            detectors=detectors,
            max_offsets=FINAL_MAX_OFFSETS,
        )

    assert run(load_config(config("first", detectors)), spark=spark) == 0
    before = table_rows(tmp_path / "results.db")
    assert before and {row[1] for row in before} == {"ema"}

    changed = [{"name": "ema", "params": {"window": 7, "warmup": 3}}]
    sigterm = signal.getsignal(signal.SIGTERM)  # main() installs its own handler
    try:
        capsys.readouterr()
        code = main(["--config", str(config("changed", changed)), "--available-now"])
        err = capsys.readouterr().err
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    assert code == 3, err
    assert "refusing to start" in err and "detector 'ema' was" in err, err
    assert "Revert the change, or start this stream from a new checkpoint" in err
    assert table_rows(tmp_path / "results.db") == before  # nothing was written

    later = [m for m in stream_messages() if isinstance(m, dict)][90:180]
    produce_messages(bootstrap, "cm-in", later)
    added = [*detectors, {"name": "ema", "label": "ema_slow", "params": {"window": 20, "warmup": 3}}]
    assert run(load_config(config("added", added)), spark=spark) == 0
    after = table_rows(tmp_path / "results.db")
    assert set(before) < set(after)  # the old rows are untouched, new windows were scored
    old_ts = {row[4] for row in before}
    new_ts = {row[4] for row in after if row[1] == "ema"} - old_ts
    assert new_ts and {row[4] for row in after if row[1] == "ema_slow"} == new_ts  # fresh state, new windows only
