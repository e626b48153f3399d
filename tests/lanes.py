"""Test lanes: markers taken from the fixtures a test uses, and the fast lane (``pytest --fast``).

A test that uses -- itself or through another fixture -- a fixture that starts something slow (a
Spark driver, the Kafka broker, PostgreSQL, a Spark cluster, Chromium, Alertmanager) gets that
fixture's marker (``FIXTURE_MARKERS``) and the umbrella marker ``slow``. So does a test in a module
marked by hand with one of ``SLOW_MARKERS`` (``restart_safety``: the job as a subprocess). A new test
cannot forget its marker: using the fixture is enough.

``--fast`` deselects every ``slow`` test and says at the end how many it left out. In the fast lane
``java`` is a stub that exits with a message (``JAVA_HOME`` and ``PATH`` point at it), so a test that
starts a JVM some other way -- the job as a subprocess, a broker of its own -- fails at once with the
reason instead of quietly making the lane slow.

``ANOMALY_LONG_TESTS=1`` (``scripts/test.sh --long``) makes the fault tests run their longer soak.

``tests/conftest.py`` imports the hooks below; ``pytest -p tests.lanes`` loads them elsewhere.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

# fixture -> marker; a fixture reached through another fixture counts (item.fixturenames is the closure)
FIXTURE_MARKERS = {
    "spark": "spark",
    "kafka_broker": "kafka",
    "kafka_jars": "kafka",  # a test that starts a broker of its own
    "postgres": "postgres",
    "spark_cluster": "cluster",
    "browser": "browser",
    "chromium_path": "browser",
    "demo_run": "browser",
    "dashboard": "browser",
    "alertmanager": "alertmanager",
}
# every one of these implies `slow`; restart_safety is set by hand on modules that start the job as a subprocess
SLOW_MARKERS = ("spark", "kafka", "postgres", "cluster", "browser", "alertmanager", "restart_safety")
MARKER_HELP = {
    "slow": "needs Spark, the broker, PostgreSQL, a cluster, a browser or Alertmanager (set automatically)",
    "spark": "uses the session's SparkSession (set automatically from the fixture)",
    "kafka": "uses a Kafka broker (set automatically from the fixture)",
    "postgres": "uses the PostgreSQL server (set automatically from the fixture)",
    "alertmanager": "uses the Alertmanager server (set automatically from the fixture)",
}
_LEFT_OUT = pytest.StashKey[Counter]()  # fast lane: slow tests left out, by marker
_LEFT_OUT_TOTAL = pytest.StashKey[int]()
_JAVA_STUB_DIR = pytest.StashKey[Path]()
LONG_TESTS = os.environ.get("ANOMALY_LONG_TESTS", "") not in ("", "0")

_JAVA_STUB = """#!/bin/sh
echo "the fast lane (scripts/test.sh --fast) starts no JVM: this test needs Spark or a broker, so it must" >&2
echo "use a fixture of tests/lanes.py FIXTURE_MARKERS or carry a marker of SLOW_MARKERS" >&2
exit 97
"""


def lane_markers(fixturenames: Iterable[str], own_markers: Iterable[str]) -> set[str]:
    """The markers a test gets from its fixtures and its explicit markers, ``slow`` included when due."""
    found = {FIXTURE_MARKERS[name] for name in fixturenames if name in FIXTURE_MARKERS}
    if found or set(own_markers) & set(SLOW_MARKERS):
        found.add("slow")
    return found


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fast",
        action="store_true",
        help="run only the tests that need no Spark, broker, PostgreSQL, cluster, browser or Alertmanager",
    )


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKER_HELP.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    if config.getoption("fast"):
        stub = Path(tempfile.mkdtemp(prefix="anomaly-fast-lane-java-"))
        config.stash[_JAVA_STUB_DIR] = stub
        (stub / "bin").mkdir()
        java = stub / "bin" / "java"
        java.write_text(_JAVA_STUB)
        java.chmod(0o755)
        os.environ["JAVA_HOME"] = str(stub)
        os.environ["PATH"] = f"{stub / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow: list[pytest.Item] = []
    for item in items:
        own = {mark.name for mark in item.iter_markers()}
        for name in sorted(lane_markers(getattr(item, "fixturenames", ()), own) - own):
            item.add_marker(name)
        if item.get_closest_marker("slow") is not None:
            slow.append(item)
    if not config.getoption("fast") or not slow:
        return
    config.hook.pytest_deselected(items=slow)
    left_out = set(map(id, slow))
    items[:] = [item for item in items if id(item) not in left_out]
    config.stash[_LEFT_OUT] = Counter(m for item in slow for m in SLOW_MARKERS if item.get_closest_marker(m))
    config.stash[_LEFT_OUT_TOTAL] = len(slow)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not config.getoption("fast"):
        return
    total = config.stash.get(_LEFT_OUT_TOTAL, 0)
    by_marker = ", ".join(f"{name} {count}" for name, count in config.stash.get(_LEFT_OUT, Counter()).most_common())
    terminalreporter.write_line(
        f"fast lane: left out {total} slow tests ({by_marker or 'none'}; a test may count under several markers); "
        "scripts/test.sh runs them all"
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    stub = config.stash.get(_JAVA_STUB_DIR, None)
    if stub is not None:
        shutil.rmtree(stub, ignore_errors=True)
