"""Session fixtures for the browser tests: one headless Chromium, and the demo's job run once.

Chromium is Debian's (scripts/chromium.sh installs it with apt-get when missing),
driven by Playwright for Python pointed at that binary: no browser download.
Without Chromium the browser tests skip locally and fail under CI (``CI`` set).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
XSS_APP = "<img src=x onerror=alert(1)>"
TOKEN = "test-token-4f9c"


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set: failing instead of skipping)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    proc = subprocess.run([str(REPO / "scripts" / "chromium.sh")], capture_output=True, text=True, check=False)
    path = proc.stdout.strip()
    if proc.returncode != 0 or not path:
        _unavailable(f"no Chromium for the browser tests: {proc.stderr.strip()[-300:]}")
    return path


@pytest.fixture(scope="session")
def browser(chromium_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        instance = pw.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"], headless=True)
        yield instance
        instance.close()


@dataclass
class DemoRun:
    work: Path
    db: Path
    returncode: int
    stdout: str
    stderr: str

    @property
    def jdbc_url(self) -> str:
        return f"jdbc:sqlite:{self.db}"


@pytest.fixture(scope="session")
def demo_run(kafka_broker, driver_class_archive, tmp_path_factory) -> DemoRun:
    """The demo's job path (./spark-submit.sh, conf/demo.yaml, --available-now) on a small
    synthetic stream plus an application whose name is an XSS attempt; its log captured."""
    from tools.demo import BAD_MESSAGES, submit_job
    from tools.synthetic import generate, produce_messages

    work = tmp_path_factory.mktemp("demo")
    stream = generate(points_per_app=720)
    hostile = [
        {"application": XSS_APP, "value": 10.0 + (i % 7) + (40.0 if i == 500 else 0.0), "ts": m["ts"]}
        for i, m in enumerate(x for x in stream.messages if x["application"] == stream.messages[0]["application"])
    ]
    for topic in ("metrics", "anomalies", "metrics-dead-letters"):
        kafka_broker.create_topic(topic, partitions=2)
    produce_messages(kafka_broker.bootstrap_servers, "metrics", stream.messages + hostile)
    produce_messages(kafka_broker.bootstrap_servers, "metrics", BAD_MESSAGES)
    job = submit_job(kafka_broker.bootstrap_servers, work, capture_output=True, text=True, timeout=600)
    return DemoRun(work, work / "anomalies.db", job.returncode, job.stdout, job.stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Dashboard:
    url: str  # ends with "/"
    token: str
    process: subprocess.Popen


@pytest.fixture(scope="session")
def dashboard(demo_run, shared_dir) -> Dashboard:
    """``python -m tools.dashboard`` over the demo run's table, with a token (checked on every request)."""
    if demo_run.returncode != 0:
        pytest.fail(f"the demo job failed (exit {demo_run.returncode}):\n{demo_run.stderr[-3000:]}")
    port = free_port()
    env = {**os.environ, "ANOMALY_DASHBOARD_TOKEN": TOKEN}
    command = [sys.executable, "-m", "tools.dashboard", "--jdbc", demo_run.jdbc_url, "--port", str(port)]
    command += ["--data-dir", str(shared_dir / "data" / "nab" / "data"), "--sandbox-timeout", "60"]
    log_path = demo_run.work / "dashboard.log"
    log_file = open(log_path, "w")  # noqa: SIM115 - the server writes here for the whole session
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "favicon.ico?token=" + TOKEN, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the dashboard did not start:\n{log_path.read_text()}")
            time.sleep(0.2)
    yield Dashboard(url, TOKEN, proc)
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log_file.close()
