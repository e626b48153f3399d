"""The local KRaft broker used by the demo and the integration tests (real JVM, no Spark)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from tools import local_kafka
from tools.cluster import process_alive
from tools.local_kafka import KafkaBrokerError, KafkaJarsMissing, LocalKafkaBroker
from tools.synthetic import consume_all, generate, produce_messages

REPO = Path(__file__).resolve().parent.parent

try:
    local_kafka.check_kafka_jars()
    local_kafka.java_executable()
    _SKIP_REASON = None
except KafkaBrokerError as exc:  # pragma: no cover - depends on the machine
    _SKIP_REASON = str(exc)


@pytest.fixture
def kafka_jars() -> None:
    """For tests that start a broker of their own: skip without the jars or Java (marks the test ``kafka``)."""
    if _SKIP_REASON is not None:
        pytest.skip(_SKIP_REASON)


def _topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# --------------------------------------------------------------------------- no JVM needed


def test_missing_jars_error_points_to_bootstrap(tmp_path, monkeypatch):
    monkeypatch.setenv(local_kafka.JARS_ENV, str(tmp_path))
    with pytest.raises(KafkaJarsMissing, match=r"scripts/bootstrap\.sh"):
        LocalKafkaBroker()


def test_cluster_id_is_valid_kafka_uuid():
    import base64

    for _ in range(50):
        cid = local_kafka.random_cluster_id()
        assert len(cid) == 22 and not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_port_in_use_gives_clear_error(kafka_jars, monkeypatch):
    monkeypatch.setattr(local_kafka, "PORT_WAIT_S", 0.2)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        broker = LocalKafkaBroker(port=squatter.getsockname()[1])
        try:
            with pytest.raises(KafkaBrokerError, match="in use"):
                broker.start()
            assert not broker.is_running
        finally:
            broker.close()


# --------------------------------------------------------------------------- shared broker


def test_broker_is_up(kafka_broker):
    host, port = kafka_broker.bootstrap_servers.split(":")
    assert host == "127.0.0.1" and int(port) == kafka_broker.port != kafka_broker.controller_port
    assert kafka_broker.is_running and process_alive(kafka_broker.pid)
    assert kafka_broker.last_startup_seconds < 60
    props = kafka_broker.config_file.read_text()
    assert "process.roles=broker,controller" in props and "num.partitions=2" in props
    assert (kafka_broker.data_dir / "meta.properties").exists()
    assert isinstance(kafka_broker.list_topics(), list)


def test_produce_consume_round_trip(kafka_broker):
    topic = _topic("roundtrip")
    stream = generate(points_per_app=25, inject=False)
    raw = [b"not json", b"\xff\xfe\x00", b""]
    sent = produce_messages(kafka_broker.bootstrap_servers, topic, [*stream.messages, *raw])
    assert sent == len(stream.messages) + len(raw)

    records = consume_all(kafka_broker.bootstrap_servers, topic, timeout_s=30)
    assert len(records) == sent
    assert len({r.partition for r in records}) == 2  # auto-created with num.partitions=2

    by_key = defaultdict(list)
    for r in records:
        by_key[r.key].append(r.value)
    assert sorted(by_key[None]) == sorted(raw)
    for app in {m["application"] for m in stream.messages}:
        # Per key, order is preserved (one partition per key, in-order sends).
        expected = [m for m in stream.messages if m["application"] == app]
        assert [json.loads(v) for v in by_key[app.encode()]] == expected


def test_create_topic_with_partitions(kafka_broker):
    topic = _topic("parts")
    kafka_broker.create_topic(topic, partitions=3)
    kafka_broker.create_topic(topic, partitions=3)  # exist_ok
    assert topic in kafka_broker.list_topics()
    admin = kafka_broker.admin()
    try:
        (desc,) = admin.describe_topics([topic])
    finally:
        admin.close()
    assert len(desc["partitions"]) == 3

    messages = generate(points_per_app=30, inject=False).messages
    produce_messages(kafka_broker.bootstrap_servers, topic, messages)
    records = consume_all(kafka_broker.bootstrap_servers, topic, timeout_s=30)
    assert len(records) == len(messages)
    assert {r.partition for r in records} <= {0, 1, 2}
    partition_of_key = defaultdict(set)
    for r in records:
        partition_of_key[r.key].add(r.partition)
    assert all(len(p) == 1 for p in partition_of_key.values())


def test_restart_keeps_data_and_ports(kafka_broker):
    topic = _topic("restart")
    before = generate(points_per_app=10, inject=False, seed=1).messages
    produce_messages(kafka_broker.bootstrap_servers, topic, before)
    old_pid, old_servers = kafka_broker.pid, kafka_broker.bootstrap_servers

    kafka_broker.restart()

    assert _wait_gone(old_pid, timeout=1)
    assert kafka_broker.pid != old_pid and kafka_broker.is_running
    assert kafka_broker.bootstrap_servers == old_servers
    after = generate(points_per_app=10, inject=False, seed=2).messages
    produce_messages(kafka_broker.bootstrap_servers, topic, after)
    values = [json.loads(r.value) for r in consume_all(kafka_broker.bootstrap_servers, topic)]
    assert sorted(map(json.dumps, values)) == sorted(map(json.dumps, before + after))


# --------------------------------------------------------------------------- own brokers


def test_crash_recover_and_stop_leave_no_process(kafka_jars):
    with LocalKafkaBroker(num_partitions=1) as broker:
        log_dir = broker.log_dir
        topic = _topic("crash")
        produce_messages(broker.bootstrap_servers, topic, [b"a", b"b", b"c"])
        crashed_pid = broker.pid

        broker.kill()  # SIGKILL: no clean shutdown
        assert not broker.is_running and broker.pid is None
        assert _wait_gone(crashed_pid, timeout=1)

        broker.start()  # recovers the log after the crash
        assert [r.value for r in consume_all(broker.bootstrap_servers, topic)] == [b"a", b"b", b"c"]
        pid = broker.pid
        broker.stop()
        assert _wait_gone(pid, timeout=1)
        broker.stop()  # idempotent
        broker.start()
        pid = broker.pid
    assert _wait_gone(pid, timeout=1)
    assert not log_dir.exists()  # the temporary log dir is removed on exit


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_broker_dies_with_its_python_process(kafka_jars, tmp_path, sig):
    """No broker is left behind when the Python process that started it is killed, even by SIGKILL."""
    script = textwrap.dedent(
        """
        import sys, time
        from tools.local_kafka import LocalKafkaBroker
        broker = LocalKafkaBroker(sys.argv[1]).start()
        print(broker.pid, flush=True)
        time.sleep(600)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "kafka")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    java_pid = None
    try:
        line = child.stdout.readline()
        assert line.strip().isdigit(), f"child did not start a broker: {line!r}"
        java_pid = int(line)
        assert process_alive(java_pid)
        child.send_signal(sig)
        child.wait(timeout=30)
        assert _wait_gone(java_pid, timeout=30), f"broker pid {java_pid} survived {sig.name} of its parent"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if java_pid is not None and process_alive(java_pid):
            os.killpg(java_pid, signal.SIGKILL)
