"""The job against a secured Kafka listener: SASL_SSL with SCRAM-SHA-512, credentials from the environment.

The session broker (tests/conftest.py) has a second listener, SASL_SSL, with a certificate signed by a
CA generated for the run (tools/local_kafka.py); the SCRAM user is created here with Kafka's own
``kafka-configs`` tool. The input is produced over the PLAINTEXT listener; the job reads it, and writes
its results and dead letters, over the SASL_SSL listener only.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from tests.test_restart_safety import BAD, Job, check_output_topic, input_topics, table_rows, write_config
from tools.synthetic import consume_all

pytestmark = pytest.mark.restart_safety  # the job as a subprocess, like the restart tests

USER = "anomaly-job"
PASSWORD = "pw-7f3a9c2e-e2e-secret"  # what must never show up in a log
USER_ENV, PASSWORD_ENV = "ANOMALY_TEST_KAFKA_USER", "ANOMALY_TEST_KAFKA_PASSWORD"
# the job must give up on a refused login within this (a Spark driver start on a busy 2-core machine
# included), not wait for a timeout
FAIL_FAST_S = 120


@pytest.fixture(scope="module")
def scram_user(kafka_broker) -> str:
    kafka_broker.add_scram_user(USER, PASSWORD)
    return USER


def secured_config(path: Path, work: Path, broker, name: str) -> Path:
    """The restart tests' config, reading and writing through the SASL_SSL listener."""
    write_config(path, work, broker.sasl_ssl_servers, name, trigger="available_now", max_offsets=250)
    raw = yaml.safe_load(path.read_text())
    raw["streams"][0]["source"]["security"] = {
        "protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "username_env": USER_ENV,
        "password_env": PASSWORD_ENV,
        "truststore": str(broker.ca_file),
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def lines_with(secret: str, *logs: Path) -> list[str]:
    return [line for log in logs for line in log.read_text(errors="replace").splitlines() if secret in line]


@pytest.mark.timeout(600)
def test_job_reads_and_writes_through_sasl_ssl_scram(kafka_broker, scram_user, driver_class_archive, tmp_path):
    input_topics(kafka_broker, "sec")
    config = secured_config(tmp_path / "job.yaml", tmp_path, kafka_broker, "sec")
    assert PASSWORD not in config.read_text()  # the config names the variables only
    job = Job(config, tmp_path / "run.log", available_now=True, env={USER_ENV: scram_user, PASSWORD_ENV: PASSWORD})
    code = job.wait(500)
    assert code == 0, job.tail()
    rows = table_rows(tmp_path / "results.db")
    assert len(rows) > 100
    # results and dead letters were written with the same credentials (read back over PLAINTEXT)
    output, duplicates = check_output_topic(consume_all(kafka_broker.bootstrap_servers, "sec-out"))
    assert duplicates == 0 and len(output) == len(rows)
    assert {r.value for r in consume_all(kafka_broker.bootstrap_servers, "sec-dlq")} == set(BAD)
    assert not lines_with(PASSWORD, job.log, kafka_broker.broker_log)


@pytest.mark.timeout(600)
def test_wrong_password_fails_fast_naming_listener_and_mechanism(
    kafka_broker, scram_user, driver_class_archive, tmp_path
):
    kafka_broker.create_topic("secbad-in", partitions=1)
    config = secured_config(tmp_path / "job.yaml", tmp_path, kafka_broker, "secbad")
    wrong = "wrong-" + PASSWORD[::-1]
    started = time.monotonic()
    job = Job(config, tmp_path / "run.log", available_now=True, env={USER_ENV: scram_user, PASSWORD_ENV: wrong})
    code = job.wait(FAIL_FAST_S + 60)
    took = time.monotonic() - started
    log = job.log.read_text(errors="replace")
    assert code == 1, job.tail()
    assert took < FAIL_FAST_S, f"a refused login took {took:.0f} s to fail"
    expected = f"Kafka authentication failed at listener {kafka_broker.sasl_ssl_servers} (SASL_SSL/SCRAM-SHA-512)"
    assert expected in log, job.tail()
    assert f"user '{USER}', password from ${PASSWORD_ENV}" in log
    assert not lines_with(wrong, job.log, kafka_broker.broker_log)
    assert not lines_with(PASSWORD, job.log, kafka_broker.broker_log)
    print(f"\nwrong password: exit {code} after {took:.1f} s (driver start included)")
