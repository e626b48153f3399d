"""The test lanes (tests/lanes.py): markers come from the fixtures a test uses; --fast leaves slow tests out.

A small test tree with stand-in fixtures named like the session's (``spark``, ``kafka_broker``...) runs
in a pytest subprocess with the lanes plugin: nothing there starts Spark or a broker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.lanes import FIXTURE_MARKERS, lane_markers

REPO = Path(__file__).resolve().parent.parent

CONFTEST = """
import pytest

@pytest.fixture
def spark():
    return "a stand-in, no Spark"

@pytest.fixture
def kafka_broker():
    return "a stand-in, no broker"

@pytest.fixture
def topic(kafka_broker):  # the broker reached through another fixture
    return "t"
"""
TESTS = """
import os
import subprocess
import pytest

def test_plain():
    assert "anomaly-fast-lane-java-" in os.environ["JAVA_HOME"]

def test_uses_spark(spark):
    pass

def test_uses_a_fixture_that_uses_the_broker(topic):
    pass

@pytest.mark.restart_safety
def test_marked_by_hand():
    pass

def test_starts_java_without_a_marker():
    subprocess.run(["java", "-version"], check=True)
"""


def run_pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (tmp_path / "test_sample.py").write_text(textwrap.dedent(TESTS))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PYTEST_ADDOPTS", None)
    command = [sys.executable, "-m", "pytest", "-p", "tests.lanes", "-p", "no:cacheprovider", "-rA", *args]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_markers_follow_the_fixtures_and_imply_slow():
    assert lane_markers(["tmp_path"], []) == set()
    assert lane_markers(["spark", "tmp_path"], []) == {"spark", "slow"}
    assert lane_markers(["reference", "kafka_broker", "postgres"], []) == {"kafka", "postgres", "slow"}
    assert lane_markers([], ["restart_safety"]) == {"slow"}
    assert lane_markers([], ["parametrize"]) == set()
    assert set(FIXTURE_MARKERS) >= {"spark", "kafka_broker", "postgres", "browser", "dashboard", "demo_run"}


def test_a_test_using_spark_gets_the_spark_and_slow_markers(tmp_path):
    result = run_pytest(tmp_path, "-m", "spark and slow", "--collect-only", "-q")
    assert "test_sample.py::test_uses_spark" in result.stdout, result.stdout
    assert "test_plain" not in result.stdout
    result = run_pytest(tmp_path, "-m", "kafka and slow", "--collect-only", "-q")
    assert "test_uses_a_fixture_that_uses_the_broker" in result.stdout, result.stdout
    assert "test_uses_spark" not in result.stdout


def test_the_fast_lane_runs_the_rest_says_what_it_left_out_and_refuses_a_jvm(tmp_path):
    result = run_pytest(tmp_path, "--fast")
    out = result.stdout
    assert "PASSED test_sample.py::test_plain" in out, out
    for slow in ("test_uses_spark", "test_uses_a_fixture_that_uses_the_broker", "test_marked_by_hand"):
        assert f"test_sample.py::{slow}" not in out, out
    assert "3 deselected" in out, out
    assert "fast lane: left out 3 slow tests (" in out and "spark 1" in out and "kafka 1" in out, out
    assert "restart_safety 1" in out, out
    # a JVM started without a marker fails with the reason, in the fast lane only
    assert "FAILED test_sample.py::test_starts_java_without_a_marker" in out, out
    assert "the fast lane (scripts/test.sh --fast) starts no JVM" in out + result.stderr, out
    assert result.returncode == 1
