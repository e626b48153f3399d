"""The job on a real Spark standalone cluster: a master and two workers (1 core each) started from the
pyspark wheel (tools/cluster.py), the job submitted with ./spark-submit.sh --master spark://...

One run, with executors on both workers (the master's JSON) running the shipped Python environment,
then one worker SIGKILLed (with its executor) mid-batch: the job goes on with the other worker, the
restarted worker gets an executor again, and the run's JDBC table equals, row for row and bit for bit,
the local-mode run's over the same input (the session fixture ``reference``, tests/conftest.py).

One cluster for the module; deselect with ``-m "not cluster"``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_restart_safety import (
    BAD,
    REPO,
    Job,
    batch_ids,
    compare,
    input_topics,
    stream_messages,
    table_rows,
    write_config,
)
from tools import cluster
from tools.synthetic import consume_all

pytestmark = pytest.mark.cluster
TOTAL = len(stream_messages())


class Submitted(Job):
    """``./spark-submit.sh --master <cluster> -- --config ...`` in its own process group."""

    def __init__(self, master: str, config: Path, log: Path, *, available_now: bool = False) -> None:
        cmd = [str(REPO / "spark-submit.sh"), "--master", master, "--", "--config", str(config)]
        if available_now:
            cmd.append("--available-now")
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, timeout: float = 120) -> int:
        """SIGTERM the job's Python driver (a clean stop: jobs/main.py stops the queries), wait for the
        whole spark-submit to exit."""
        for pid in cluster.descendants(self.proc.pid):
            with contextlib.suppress(OSError):
                if b"jobs/main.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGTERM)
        return self.wait(timeout)


@pytest.fixture(scope="module")
def spark_cluster(tmp_path_factory) -> Iterator[tuple[cluster.ClusterState, Path]]:
    directory = tmp_path_factory.mktemp("cluster")
    state = cluster.start(directory, workers=2)
    try:
        yield state, directory
    finally:
        cluster.stop(directory)
        left = [p for p in [state.master_pid, *state.worker_pids] if cluster._group_alive(p)]
        assert not left, f"cluster processes left behind: {left}"


def app_cores_by_worker(state: cluster.ClusterState) -> dict[str, int]:
    """{worker id: cores in use} of the ALIVE workers, from the master's JSON."""
    return {w["id"]: w["coresused"] for w in cluster.alive_workers(state)}


def executor_pythons(cluster_dir: Path) -> set[str]:
    """Where the numpy of each Python worker running inside the cluster dir was loaded from."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if not os.readlink(entry / "cwd").startswith(str(cluster_dir)):
                continue
            for line in (entry / "maps").read_text().splitlines():
                if "site-packages/numpy/" in line:
                    found.add(line.split()[-1].split("/lib/python")[0])
                    break
    return found


def last_offset(checkpoint: Path, batch: int, topic: str) -> int:
    """The end offset of ``topic``'s partition 0 in batch ``batch``'s offsets file (the source also reads
    the incident feedback topic)."""
    line = (checkpoint / "offsets" / str(batch)).read_text().splitlines()[-1]
    return json.loads(line)[topic]["0"]


def consumed_all(checkpoint: Path, topic: str) -> bool:
    """Whether the last committed batch ends at the input's last offset."""
    committed = batch_ids(checkpoint / "commits")
    return bool(committed) and last_offset(checkpoint, max(committed), topic) == TOTAL


@pytest.mark.timeout(900)
def test_cluster_run_with_a_worker_sigkilled_mid_batch_equals_local_mode(
    kafka_broker, spark_cluster, reference, driver_class_archive, tmp_path
):
    """Executors on both workers running the shipped environment; then one worker SIGKILLed mid-batch: the
    job goes on, the worker comes back, and the table equals the local-mode run's bit for bit."""
    state, cluster_dir = spark_cluster
    input_topics(kafka_broker, "clkill")
    config = write_config(
        tmp_path / "job.yaml",
        tmp_path,
        kafka_broker.bootstrap_servers,
        "clkill",
        trigger="processing_time",
        max_offsets=60,  # 9 batches: 2 or more before the kill, the one in flight, 2 after it, and slack
    )
    checkpoint = tmp_path / "checkpoints" / "chaos"
    started = time.monotonic()
    job = Submitted(state.master_url, config, tmp_path / "run.log")
    try:
        # both executors up, a few batches done; then a batch in flight (planned, not committed)
        deadline = time.monotonic() + 400
        pythons: set[str] = set()
        while not (len(batch_ids(checkpoint / "commits")) >= 2 and set(app_cores_by_worker(state).values()) == {1}):
            assert job.alive() and time.monotonic() < deadline, job.tail()
            pythons |= executor_pythons(cluster_dir)
            time.sleep(0.2)
        pythons |= executor_pythons(cluster_dir)
        # the executors' Python is the shipped environment, unpacked in their working dirs
        assert pythons and all(p.startswith(str(cluster_dir)) and p.endswith("/env") for p in pythons), pythons
        deadline = time.monotonic() + 120
        while not batch_ids(checkpoint / "offsets") - batch_ids(checkpoint / "commits"):
            assert job.alive() and time.monotonic() < deadline, job.tail()
            time.sleep(0.01)
        victim = state.worker_pids[1]
        in_flight = max(batch_ids(checkpoint / "offsets"))
        family = cluster.descendants(victim)
        os.killpg(victim, signal.SIGKILL)
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        # the job goes on with one worker: the batch in flight and later ones commit
        deadline = time.monotonic() + 300
        while max(batch_ids(checkpoint / "commits"), default=-1) < in_flight + 2:
            assert job.alive() and time.monotonic() < deadline, f"no progress after the worker loss:\n{job.tail()}"
            time.sleep(0.2)
        recovered_s = time.monotonic() - killed_at
        # the worker comes back and gets an executor of the running application again
        cluster.restart_worker(cluster_dir, state, 2)
        deadline = time.monotonic() + 300
        while sorted(app_cores_by_worker(state).values()) != [1, 1]:
            assert job.alive() and time.monotonic() < deadline, "the restarted worker got no executor"
            time.sleep(0.5)
        # the whole input consumed (a committed batch ends at the last offset) and the results written:
        # the table equals the uninterrupted run's. Both are waited for: the sink writes a batch's rows
        # before Spark writes its commit file, and the last messages may write no row at all.
        deadline = time.monotonic() + 400
        while not (consumed_all(checkpoint, "clkill-in") and table_rows(tmp_path / "results.db") == reference.rows):
            assert job.alive() and time.monotonic() < deadline, (
                f"input consumed: {consumed_all(checkpoint, 'clkill-in')}; table never equal to the reference:\n"
                f"{job.tail()}"
            )
            time.sleep(1)
    finally:
        code = job.stop() if job.alive() else job.wait(10)
    assert code == 0, job.tail()
    figures = compare(reference, tmp_path, kafka_broker.bootstrap_servers, "clkill")
    assert len(consume_all(kafka_broker.bootstrap_servers, "clkill-dlq")) >= len(BAD)
    print(
        f"\nworker 2 SIGKILLed in batch {in_flight} (uncommitted); the job went on with worker 1 "
        f"({recovered_s:.0f} s to commit two more batches); worker restarted, executor back; {figures}; "
        f"executors' env {sorted(pythons)}; "
        f"{time.monotonic() - started:.0f} s"
    )
