"""How long the job's driver takes from its start to its first committed batch, with and without a
class-data-sharing archive, in one run.

    .venv/bin/python bench/driver_start.py              # 4 starts each way
    .venv/bin/python bench/driver_start.py --starts 6 --keep-archive build/driver.jsa

A restarted job (after a crash, a redeploy, a supervisor's restart) delivers nothing from its driver's
start until its first batch commits. Much of that time is the JVM loading and verifying Spark's classes
one by one; a JDK class-data-sharing archive written by a driver that has run the job lets the next
drivers map them instead (``$ANOMALY_DRIVER_CLASS_ARCHIVE``, jobs/session.py and spark-submit.sh;
docs/operations.md says how to write one).

One local broker (tools/local_kafka.py), a topic of synthetic metrics (tools/synthetic.py), the job as an
operator runs it (``python -m jobs.main``, local mode, 1 shuffle partition, ``ema``, a SQLite table).
First a run with ``$ANOMALY_DRIVER_CLASS_ARCHIVE`` naming a file that does not exist yet (its driver
starts ready to write it) writes the archive with ``jcmd ... VM.cds dynamic_dump`` after its third
committed batch, as docs/operations.md tells an operator to do. Then
starts without the archive (the anchor) and with it, in turn, each from a fresh checkpoint and stopped
(SIGKILL) after its first committed batch. Per start: seconds to the query's "started" line and to the
first commit file. The table gives the median of each and the ratio with/without, both measured in this
run. Not run in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from jobs.session import CLASS_ARCHIVE_ENV  # noqa: E402
from tools.cluster import descendants  # noqa: E402
from tools.local_kafka import LocalKafkaBroker  # noqa: E402
from tools.synthetic import generate, produce_messages  # noqa: E402

TOPIC = "driver-start-in"
STARTED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO anomaly\.progress: \[\w+\] started ")


def write_config(work: Path, bootstrap: str, java_options: str) -> Path:
    """The job's config: small batches, so that the first one is mostly the start-up cost."""
    raw = {
        "checkpoint_dir": str(work / "checkpoints"),
        "trigger": "processing_time",
        "trigger_interval": "500 milliseconds",
        "spark_conf": {
            "spark.sql.shuffle.partitions": "1",
            "spark.ui.enabled": "false",
            "spark.driver.extraJavaOptions": (
                f"-Dlog4j2.configurationFile={REPO / 'conf' / 'log4j2.properties'} {java_options}"
            ).strip(),
        },
        "streams": [
            {
                "name": "start",
                "source": {"bootstrap_servers": bootstrap, "topics": [TOPIC], "max_offsets_per_trigger": 50},
                "aggregation": {"agg_function": "avg", "agg_window_millis": 60_000},
                "detectors": [{"name": "ema"}],
                "sinks": {
                    "dead_letter_topic": "driver-start-dlq",
                    "jdbc": {"url": f"jdbc:sqlite:{work / 'results.db'}", "table": "predictions"},
                },
            }
        ],
    }
    path = work / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def commits(work: Path) -> int:
    directory = work / "checkpoints" / "start" / "commits"
    return sum(1 for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else 0


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the job's process group and every descendant (Spark's Python daemon leaves the group)."""
    family = descendants(proc.pid)
    for kill, target in ((os.killpg, proc.pid), *((os.kill, pid) for pid in family)):
        with contextlib.suppress(ProcessLookupError):
            kill(target, signal.SIGKILL)
    proc.wait(30)


class Start:
    """One driver start: ``python -m jobs.main`` in its own process group, its log in ``work``."""

    def __init__(self, work: Path, config: Path, env: dict[str, str]) -> None:
        self.work = work
        self.log = work / "job.log"
        self.began = time.time()
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jobs.main", "--config", str(config)],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_for_commits(self, count: int, timeout_s: float = 300.0) -> float:
        """Seconds from the start until ``count`` batches committed."""
        deadline = time.monotonic() + timeout_s
        while commits(self.work) < count:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the job did not commit {count} batches; its log:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.02)
        return time.time() - self.began

    def started_s(self) -> float:
        """Seconds from the start to the query's "started" line (the job's own log)."""
        for line in self.log.read_text(errors="replace").splitlines():
            match = STARTED.match(line)
            if match:
                stamp = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                return stamp - self.began
        raise SystemExit(f"no 'started' line in {self.log}")


def jvm_of(proc: subprocess.Popen) -> int:
    """The driver JVM's pid: the child of the job's Python that runs SparkSubmit."""
    for _ in range(600):
        found = subprocess.run(["pgrep", "-g", str(proc.pid), "-f", "SparkSubmit"], capture_output=True, text=True)
        pids = [int(p) for p in found.stdout.split()]
        if pids:
            return pids[0]
        time.sleep(0.1)
    raise SystemExit("no driver JVM found")


def write_archive(root: Path, bootstrap: str, archive: Path) -> None:
    """A run of the job that writes ``archive`` with ``jcmd VM.cds dynamic_dump`` after its third commit."""
    work = root / "archive-run"
    work.mkdir()
    config = write_config(work, bootstrap, "")
    # the archive named but not there yet: the driver starts ready to write it (jobs/session.py)
    start = Start(work, config, {**os.environ, CLASS_ARCHIVE_ENV: str(archive)})
    try:
        start.wait_for_commits(3)
        jcmd = Path(shutil.which("jcmd") or "jcmd")
        done = subprocess.run(
            [str(jcmd), str(jvm_of(start.proc)), "VM.cds", "dynamic_dump", str(archive)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0 or not archive.is_file():
            raise SystemExit(f"jcmd could not write the archive: {done.stdout[-500:]}{done.stderr[-500:]}")
    finally:
        kill_tree(start.proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=4, help="starts each way (default 4)")
    parser.add_argument("--keep-archive", type=Path, help="copy the archive here (else it is removed)")
    args = parser.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k != CLASS_ARCHIVE_ENV}
    with tempfile.TemporaryDirectory(prefix="driver-start-") as tmp:
        root = Path(tmp)
        with LocalKafkaBroker(root / "kafka", num_partitions=1) as broker:
            bootstrap = broker.bootstrap_servers
            broker.create_topic(TOPIC, partitions=1)
            broker.create_topic("driver-start-dlq", partitions=1)
            produce_messages(bootstrap, TOPIC, generate(points_per_app=200).messages)
            archive = root / "driver.jsa"
            print(f"writing the archive from a run of the job ({bootstrap}) ...", flush=True)
            write_archive(root, bootstrap, archive)
            print(f"archive: {archive.stat().st_size / 1e6:.0f} MB", flush=True)
            times: dict[str, list[tuple[float, float]]] = {"without": [], "with": []}
            for i in range(args.starts):
                for way in ("without", "with"):
                    work = root / f"{way}-{i}"
                    work.mkdir()
                    config = write_config(work, bootstrap, "")
                    run_env = {**env, CLASS_ARCHIVE_ENV: str(archive)} if way == "with" else env
                    start = Start(work, config, run_env)
                    try:
                        first = start.wait_for_commits(1)
                    finally:
                        kill_tree(start.proc)
                    times[way].append((start.started_s(), first))
                    print(
                        f"  start {i + 1} {way:>7} the archive: started {times[way][-1][0]:5.1f} s, "
                        f"first commit {first:5.1f} s",
                        flush=True,
                    )
            if args.keep_archive:
                shutil.copyfile(archive, args.keep_archive)
    print()
    print(f"{'driver start, median of ' + str(args.starts):<34}{'query started':>15}{'first commit':>15}")
    medians = {way: [statistics.median(t[k] for t in times[way]) for k in (0, 1)] for way in times}
    for way in ("without", "with"):
        print(f"{way + ' the archive':<34}{medians[way][0]:>13.1f} s{medians[way][1]:>13.1f} s")
    ratios = [medians["with"][k] / medians["without"][k] for k in (0, 1)]
    print(f"{'with / without (same run)':<34}{ratios[0]:>15.2f}{ratios[1]:>15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
