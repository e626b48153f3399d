"""Session-wide fixtures: one SparkSession and one Kafka broker for the whole run."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest

from tests.alertmanager_fixture import alertmanager  # noqa: F401 - session fixture: a real Alertmanager
from tests.browser_fixture import browser, chromium_path, dashboard, demo_run  # noqa: F401 - session fixtures
from tests.lanes import (  # noqa: F401 - hooks: markers from the fixtures a test uses, the fast lane
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_terminal_summary,
    pytest_unconfigure,
)
from tests.postgres_fixture import postgres  # noqa: F401 - session fixture: a real PostgreSQL server

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ANOMALY_SHARED_DIR", REPO.parent / "shared"))

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
# Spark's Python workers must import test-only detectors from tests/ too
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared (NAB data and seeds); tests that need it skip cleanly without it."""
    if not (SHARED / "data" / "nab").is_dir():
        pytest.skip(f"../shared not found at {SHARED}: NAB data tests skipped")
    return SHARED


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from jobs.session import CLASS_ARCHIVE_ENV, build_session

    # the archive the job drivers of the tests will map, not written yet: the session's driver starts ready
    # to write it (jobs/session.py), which fixture driver_class_archive does once the reference job ran
    os.environ[CLASS_ARCHIVE_ENV] = str(tmp_path_factory.mktemp("cds") / "driver.jsa")
    session = build_session(
        "anomaly-tests",
        conf={
            "spark.sql.shuffle.partitions": "2",
            "spark.default.parallelism": "2",
            "spark.ui.enabled": "false",
            "spark.sql.streaming.minBatchesToRetain": "5",
            # a busy 2-core box can take more than the default 15 s to start a Python worker
            "spark.python.authenticate.socketTimeout": "120s",
        },
    )
    yield session
    session.stop()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    from tools.local_kafka import KafkaBrokerError, LocalKafkaBroker

    try:
        # a SASL_SSL (SCRAM-SHA-512) listener beside PLAINTEXT for tests/test_kafka_security.py
        broker = LocalKafkaBroker(tmp_path_factory.mktemp("kafka"), num_partitions=2, sasl_ssl=True)
    except KafkaBrokerError as err:  # jars missing: scripts/bootstrap.sh was not run
        pytest.fail(str(err))
    with broker:
        yield broker


@pytest.fixture(scope="session")
def reference(kafka_broker, spark, tmp_path_factory):
    """The fault tests' uninterrupted job run (tests/test_restart_safety.py), shared by the cluster tests;
    in the session's SparkSession (nothing is killed in it: no driver of its own to start)."""
    from tests.test_restart_safety import uninterrupted_run

    return uninterrupted_run(kafka_broker, tmp_path_factory.mktemp("reference"), spark)


@pytest.fixture(scope="session")
def driver_class_archive(spark, reference) -> Path | None:
    """The class-data-sharing archive named in $ANOMALY_DRIVER_CLASS_ARCHIVE (fixture spark), written from
    the session's driver JVM once the reference job has run in it (its classes are the job's): the job
    drivers the tests start map it (jobs/session.py, spark-submit.sh), several seconds less per start for
    ~15 of them. None, and the variable unset so that they start without one, when the JDK cannot write it."""
    import shutil
    import subprocess

    from jobs.session import CLASS_ARCHIVE_ENV

    process = spark.sparkContext._jvm.java.lang.ProcessHandle.current()
    java = Path(str(process.info().command().orElse("")))
    jcmd = java.with_name("jcmd") if java.name == "java" else Path(shutil.which("jcmd") or "jcmd")
    archive = Path(os.environ[CLASS_ARCHIVE_ENV])
    cmd = [str(jcmd), str(process.pid()), "VM.cds", "dynamic_dump", str(archive)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode == 0 and archive.is_file():
            return archive
        why = f"jcmd exit {done.returncode}: {done.stdout[-300:]}{done.stderr[-300:]}"
    except (OSError, subprocess.TimeoutExpired) as err:
        why = str(err)
    os.environ.pop(CLASS_ARCHIVE_ENV)
    warnings.warn(f"no driver class archive ({why}): job drivers start without one", stacklevel=1)
    return None
