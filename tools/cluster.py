"""A Spark standalone cluster on loopback (one master, N workers), from the venv's pyspark wheel.

    python -m tools.cluster start [--workers 2] [--dir work/cluster]   # or scripts/cluster.sh start
    python -m tools.cluster status
    python -m tools.cluster stop
    python -m tools.cluster pack-env                                   # the executors' Python environment
    python -m tools.cluster code-zip                                   # the query's code for --py-files

The daemons are Spark's own (``spark-class org.apache.spark.deploy.master.Master`` / ``...worker.Worker``
from the pyspark wheel, i.e. the Spark version pinned in deps/pom.xml). Each worker offers 1 core and a
memory cap to executors. Layout of the cluster dir (``work/cluster`` by default)::

    cluster.json           ports and pids of the running daemons (what ``status`` and ``stop`` read)
    master.log             the master's log
    worker-N/worker.log    worker N's log
    worker-N/work/         executors' working dirs (their stdout/stderr, the unpacked --archives)
    worker-N/local/        executors' scratch space (SPARK_LOCAL_DIRS: shuffle and spill files)

Each daemon runs in its own process group; ``stop`` signals the groups (an executor is a child of its
worker, in the worker's group) and waits until every process is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tools.local_kafka import free_ports

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO_ROOT / "work" / "cluster"
ENV_ARCHIVE = REPO_ROOT / "build" / "anomaly-env.tar.gz"
STATE_FILE = "cluster.json"
# What an executor of this job needs: one core, 1 GiB heap by default (spark.executor.memory), plus room.
WORKER_CORES = 1
WORKER_MEMORY = "1200m"
DAEMON_MEMORY = "256m"
START_TIMEOUT_S = 90.0
# Not needed by the executors' Python: Spark's jars come from the workers' own Spark, pip and the
# linter are development tools, and the project itself is shipped as --py-files (its editable-install
# hook would point executors at this checkout instead).
PACK_EXCLUDES = (
    "lib/python*/site-packages/pyspark/jars/*",
    "lib/python*/site-packages/pyspark/examples/*",
    "lib/python*/site-packages/pip/*",
    "lib/python*/site-packages/ruff/*",
    "bin/ruff",
    "lib/python*/site-packages/__editable__*",
    # test suites and C headers of the libraries (pandas' tests alone are 39 MB)
    "lib/python*/site-packages/*/tests/*",
    "lib/python*/site-packages/pyarrow/include/*",
    # what only the tests, the type checker and the dashboard use: nothing the query imports (playwright
    # with its browser driver is 167 MB, plotly 64 MB, mypy 63 MB): a third of the archive, and each
    # executor unpacks it at start
    *(
        f"lib/python*/site-packages/{name}/*"
        for name in ("playwright", "greenlet", "plotly", "_plotly_utils", "mypy", "mypyc", "hypothesis")
    ),
    *(f"lib/python*/site-packages/{name}/*" for name in ("_pytest", "pytest", "pygments", "chispa")),
    "lib/python*/site-packages/*__mypyc*.so",
)


class ClusterError(RuntimeError):
    pass


@dataclass
class ClusterState:
    master_port: int
    master_ui_port: int
    master_pid: int
    worker_pids: list[int] = field(default_factory=list)
    worker_ui_ports: list[int] = field(default_factory=list)

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.master_port}"

    @property
    def master_json_url(self) -> str:
        return f"http://127.0.0.1:{self.master_ui_port}/json/"


def spark_class() -> str:
    """``spark-class`` of the pyspark wheel in the interpreter's environment."""
    path = Path(sys.executable).parent / "spark-class"
    if not path.exists():
        raise ClusterError(f"no spark-class next to {sys.executable}: run scripts/bootstrap.sh")
    return str(path)


def spark_home() -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent)


def process_alive(pid: int) -> bool:
    """True if ``pid`` is a live process (a zombie is not); also used by the tests."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc): what a SIGKILL of a job's process group may miss,
    e.g. Spark's Python daemon, which starts a group of its own; used by the tests and the benches."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _env(cluster_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARK_")}
    env.update(
        {
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_DAEMON_MEMORY": DAEMON_MEMORY,
            "SPARK_LOG_DIR": str(cluster_dir),
            "SPARK_NO_DAEMONIZE": "1",
            # the wheel's spark-class looks for SPARK_HOME with whatever `python3` is on PATH
            "SPARK_HOME": spark_home(),
            # the daemons log through Spark's default log4j2 config (INFO to stderr, i.e. their log file)
        }
    )
    return env


def _spawn(cmd: list[str], log: Path, env: dict[str, str]) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n===== {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return proc.pid


def _json(url: str, timeout: float = 2.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # loopback only
        return json.loads(resp.read())


def read_state(cluster_dir: Path = DEFAULT_DIR) -> ClusterState | None:
    path = Path(cluster_dir) / STATE_FILE
    if not path.exists():
        return None
    return ClusterState(**json.loads(path.read_text()))


def master_json(state: ClusterState) -> dict:
    """The master's JSON (``/json/``): workers with their cores used, active applications."""
    return _json(state.master_json_url)


def start_worker(cluster_dir: Path, state: ClusterState, index: int) -> int:
    """Start worker ``index`` (1-based) and return its pid; its UI port is kept in ``state``."""
    work = Path(cluster_dir) / f"worker-{index}"
    (work / "work").mkdir(parents=True, exist_ok=True)
    (work / "local").mkdir(parents=True, exist_ok=True)
    env = _env(Path(cluster_dir))
    env["SPARK_LOCAL_DIRS"] = str(work / "local")
    # finished applications' working dirs (their copy of the jars and the env archive) go after a day
    env["SPARK_WORKER_OPTS"] = "-Dspark.worker.cleanup.enabled=true -Dspark.worker.cleanup.appDataTtl=86400"
    cmd = [
        spark_class(),
        "org.apache.spark.deploy.worker.Worker",
        "--host",
        "127.0.0.1",
        "--cores",
        str(WORKER_CORES),
        "--memory",
        WORKER_MEMORY,
        "--work-dir",
        str(work / "work"),
        "--webui-port",
        str(state.worker_ui_ports[index - 1]),
        state.master_url,
    ]
    return _spawn(cmd, work / "worker.log", env)


def restart_worker(cluster_dir: Path, state: ClusterState, index: int) -> int:
    """Start worker ``index`` (1-based) again after it died; ``stop`` knows the new pid."""
    pid = start_worker(cluster_dir, state, index)
    state.worker_pids[index - 1] = pid
    _save(Path(cluster_dir).resolve(), state)
    return pid


def start(
    cluster_dir: Path = DEFAULT_DIR, workers: int = 2, master_port: int | None = None, master_ui_port: int | None = None
) -> ClusterState:
    """Start a master and ``workers`` workers; wait until every worker is registered and alive."""
    cluster_dir = Path(cluster_dir).resolve()
    existing = read_state(cluster_dir)
    if existing is not None and process_alive(existing.master_pid):
        raise ClusterError(f"a cluster is already running from {cluster_dir} ({existing.master_url}); stop it first")
    cluster_dir.mkdir(parents=True, exist_ok=True)
    picked = free_ports(2 + workers)
    state = ClusterState(
        master_port=master_port or picked[0],
        master_ui_port=master_ui_port or picked[1],
        master_pid=0,
        worker_ui_ports=picked[2:],
    )
    state.master_pid = _spawn(
        [
            spark_class(),
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(state.master_port),
            "--webui-port",
            str(state.master_ui_port),
        ],
        cluster_dir / "master.log",
        _env(cluster_dir),
    )
    _save(cluster_dir, state)
    try:
        wait_for_master(state)
        state.worker_pids = [start_worker(cluster_dir, state, i + 1) for i in range(workers)]
        _save(cluster_dir, state)
        wait_for_workers(state, workers)
    except BaseException:
        stop(cluster_dir)
        raise
    return state


def _save(cluster_dir: Path, state: ClusterState) -> None:
    tmp = Path(cluster_dir) / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    os.replace(tmp, Path(cluster_dir) / STATE_FILE)


def wait_for_master(state: ClusterState, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not process_alive(state.master_pid):
            raise ClusterError("the Spark master exited during startup: see master.log in the cluster dir")
        with contextlib.suppress(OSError, ValueError):
            if master_json(state).get("status") == "ALIVE":
                return
        if time.monotonic() > deadline:
            raise ClusterError(f"the Spark master did not answer on {state.master_json_url} within {timeout:.0f} s")
        time.sleep(0.3)


def alive_workers(state: ClusterState) -> list[dict]:
    return [w for w in master_json(state).get("workers", []) if w.get("state") == "ALIVE"]


def wait_for_workers(state: ClusterState, count: int, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError):
            if len(alive_workers(state)) >= count:
                return
        if time.monotonic() > deadline:
            raise ClusterError(f"fewer than {count} workers registered with the master within {timeout:.0f} s")
        time.sleep(0.3)


def kill_group(pid: int, sig: int = signal.SIGKILL, timeout: float = 30.0) -> None:
    """Signal a daemon's process group (the daemon and its executors) and wait until all are gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    deadline = time.monotonic() + timeout
    while _group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        while _group_alive(pid):
            time.sleep(0.1)


def stop(cluster_dir: Path = DEFAULT_DIR) -> bool:
    """Stop the workers (and their executors), then the master. False if nothing was running."""
    cluster_dir = Path(cluster_dir).resolve()
    state = read_state(cluster_dir)
    if state is None:
        return False
    for pid in [*state.worker_pids, state.master_pid]:
        if pid:
            kill_group(pid, signal.SIGTERM, timeout=15.0)
    (cluster_dir / STATE_FILE).unlink(missing_ok=True)
    return True


def status(cluster_dir: Path = DEFAULT_DIR) -> str:
    state = read_state(Path(cluster_dir).resolve())
    if state is None or not process_alive(state.master_pid):
        return f"no cluster running from {cluster_dir}"
    try:
        info = master_json(state)
    except OSError as err:
        return f"master pid {state.master_pid} is running but {state.master_json_url} does not answer: {err}"
    lines = [f"master {state.master_url} ({info.get('status')}), UI http://127.0.0.1:{state.master_ui_port}/"]
    for w in info.get("workers", []):
        lines.append(
            f"  worker {w['id']} {w['state']}: cores {w['coresused']}/{w['cores']}, "
            f"memory {w['memoryused']}/{w['memory']} MiB"
        )
    for app in info.get("activeapps", []):
        lines.append(f"  application {app['id']} {app['name']!r}: {app['cores']} cores, {app['state']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the executors' Python


def _env_fingerprint(venv: Path) -> str:
    """Changes whenever a package is installed, upgraded or removed in ``venv``."""
    site = sorted((venv / "lib").glob("python*/site-packages/*.dist-info"))
    return hashlib.sha256("\n".join([*(p.name for p in site), *PACK_EXCLUDES]).encode()).hexdigest()[:16]


def pack_env(venv: Path | None = None, output: Path = ENV_ARCHIVE) -> Path:
    """Pack ``venv`` (the project's .venv by default) with venv-pack for ``--archives``; reused while the
    venv's packages are unchanged."""
    venv = Path(venv or Path(sys.prefix)).resolve()
    stamp = output.with_suffix(".stamp")
    fingerprint = _env_fingerprint(venv)
    if output.exists() and stamp.exists() and stamp.read_text() == fingerprint:
        return output
    venv_pack = shutil.which("venv-pack", path=str(venv / "bin")) or shutil.which("venv-pack")
    if venv_pack is None:
        raise ClusterError("venv-pack is not installed: run scripts/bootstrap.sh")
    output.parent.mkdir(parents=True, exist_ok=True)
    cmd = [venv_pack, "--prefix", str(venv), "--output", str(output), "--compress-level", "1", "--force", "--quiet"]
    for pattern in PACK_EXCLUDES:
        cmd += ["--exclude", pattern]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise ClusterError(f"venv-pack failed (exit {res.returncode}): {res.stderr.strip()[-2000:]}")
    stamp.write_text(fingerprint)
    return output


# What runs inside the query, on the driver and the executors; tools/ and evaluation/ stay behind.
SHIPPED_PACKAGES = ("jobs", "detectors", "incidents")


def code_zip(output: Path = REPO_ROOT / "build" / "anomaly_job.zip") -> Path:
    """The query's packages as a zip for the executors (spark-submit.sh's --py-files)."""
    import zipfile

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for package in SHIPPED_PACKAGES:
            for path in sorted((REPO_ROOT / package).rglob("*.py")):
                z.write(path, path.relative_to(REPO_ROOT))
    os.replace(tmp, output)
    return output


def shipping_conf() -> dict[str, str]:
    """Spark settings that give a cluster's executors this project's code and Python environment when the
    session is built from plain Python (``ANOMALY_SPARK_MASTER=spark://...``), as spark-submit.sh does."""
    venv_bin = str(Path(sys.executable).parent)
    # the driver-side helpers resolve "python3" on the driver's PATH (see spark-submit.sh)
    os.environ["PATH"] = f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ["PYSPARK_PYTHON"] = "python3"
    return {
        "spark.archives": f"{pack_env()}#env",
        "spark.submit.pyFiles": str(code_zip()),
        "spark.pyspark.python": "python3",
        "spark.executorEnv.PATH": f"./env/bin{os.pathsep}{os.environ['PATH']}",
        "spark.executor.extraJavaOptions": "-XX:-DontCompileHugeMethods -Djava.io.tmpdir=.",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/cluster.sh", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("start", "stop", "status", "pack-env", "code-zip"))
    parser.add_argument("--dir", default=str(DEFAULT_DIR), help="cluster dir (default: work/cluster)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--port", type=int, default=7077, help="master port (default 7077; 0: a free one)")
    parser.add_argument("--ui-port", type=int, default=8080, help="master web UI port (default 8080; 0: a free one)")
    args = parser.parse_args(argv)
    cluster_dir = Path(args.dir)
    try:
        if args.command == "start":
            state = start(cluster_dir, args.workers, args.port or None, args.ui_port or None)
            print(status(cluster_dir))
            print(f"submit with: ./spark-submit.sh --master {state.master_url} -- --config conf/demo.yaml")
        elif args.command == "stop":
            print("cluster stopped" if stop(cluster_dir) else f"no cluster running from {cluster_dir}")
        elif args.command == "status":
            print(status(cluster_dir))
        elif args.command == "code-zip":
            print(code_zip())
        else:
            print(pack_env())
    except ClusterError as err:
        print(f"cluster: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
