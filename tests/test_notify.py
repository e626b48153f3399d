"""The notifier (``python -m tools.notify``) against the session's real Kafka broker and real Alertmanager.

Incident records are produced here, as the job would write them (the contract's fields, key =
incident_id); the notifier runs as a subprocess (so it can be SIGKILLed), with short timers:
re-post every second, resolves held 2 s (Alertmanager's group_wait here is 300 ms), backoff
capped at 2 s. What reaches the receivers is read from the webhook server the fixture runs:
``/alertmanager`` is Alertmanager's receiver, ``/hook`` the notifier's generic webhook target.
Every test has its own topic and consumer group.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tools.synthetic import consume_all

REPO = Path(__file__).resolve().parent.parent
BASE_TS = "2024-03-01T10:00:00.000Z"


def incident_id(application: str, first_ms: int, detector: str = "default") -> str:
    text = "\x1f".join([application, detector, "avg", "60000", str(first_ms)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def record(
    application: str, first_ms: int, seq: int, transition: str, state: str, severity: str = "warning",
    gap_ms: int | None = None,
) -> dict[str, Any]:
    """One transition of the contract's incident record; ``gap_ms``: a resolve that can reopen for that long."""
    minute = 60_000

    def iso(ms: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"

    resolved = state == "resolved"
    return {
        "incident_id": incident_id(application, first_ms),
        "seq": seq,
        "transition": transition,
        "state": state,
        "application": application,
        "detector": "default",
        "agg_function": "avg",
        "agg_window_millis": minute,
        "opened_at": iso(first_ms),
        "event_ts": iso(first_ms + seq * minute),
        "resolved_at": iso(first_ms + seq * minute) if resolved else None,
        "severity": severity,
        "peak_probability": 0.999,
        "peak_value": 42.5 + seq,
        "peak_ts": iso(first_ms),
        "value_lower_limit": 1.0,
        "value_upper_limit": 9.0,
        "explanation": json.dumps({"kind": "spike", "sigma": 6.1}),
        "window_count": seq,
        "resolution": "clean" if resolved else None,
        "feedback": None,
        "reopen_until": iso(first_ms + seq * minute + gap_ms) if resolved and gap_ms is not None else None,
    }


def lifecycle(application: str, first_ms: int, resolve: bool = True) -> list[dict[str, Any]]:
    """opened, updated (severity rises), and resolved unless ``resolve`` is False."""
    out = [
        record(application, first_ms, 1, "opened", "open"),
        record(application, first_ms, 2, "updated", "open", severity="critical"),
    ]
    if resolve:
        out.append(record(application, first_ms, 3, "resolved", "resolved", severity="critical"))
    return out


def produce(broker: Any, topic: str, records: list[dict[str, Any] | bytes]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    try:
        for item in records:
            if isinstance(item, bytes):
                producer.send(topic, value=item, key=b"not-an-incident")
            else:
                producer.send(topic, value=json.dumps(item).encode(), key=item["incident_id"].encode())
        producer.flush(30)
    finally:
        producer.close(10)


class NotifierProcess:
    def __init__(self, broker: Any, topic: str, work: Path, alertmanager: Any = None,
                 webhook: str | None = None, extra: tuple[str, ...] = ()) -> None:
        self.command = [sys.executable, "-m", "tools.notify", "--bootstrap-servers", broker.bootstrap_servers,
                        "--topic", topic, "--group", f"g-{topic}", "--dead-letter-topic", f"{topic}-dlq",
                        "--repost-seconds", "1", "--alert-ttl-seconds", "30", "--resolve-hold-seconds", "2",
                        "--max-backoff-seconds", "2", "--timeout-seconds", "3", "--dashboard-url",
                        "http://dash.example:8050", *extra]
        if alertmanager is not None:
            self.command += ["--alertmanager-url", alertmanager.url]
        if webhook is not None:
            self.command += ["--webhook-url", webhook]
        self.log_path = work / f"notify-{topic}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> NotifierProcess:
        log = open(self.log_path, "a")  # noqa: SIM115 - the child writes to it
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(self.command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@pytest.fixture
def notifier(kafka_broker, tmp_path):
    started: list[NotifierProcess] = []

    def make(topic: str, **kwargs: Any) -> NotifierProcess:
        kafka_broker.create_topic(topic, partitions=2)
        kafka_broker.create_topic(f"{topic}-dlq", partitions=1)
        n = NotifierProcess(kafka_broker, topic, tmp_path, **kwargs)
        started.append(n)
        return n

    yield make
    for n in started:
        n.stop()


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60, log: Callable[[], str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f"\nnotifier log:\n{log()[-4000:]}" if log else ""))
        time.sleep(0.2)


def expected(records: list[dict[str, Any]]) -> Counter:
    """One firing notification per incident, one resolved per resolved incident."""
    out: Counter = Counter()
    for r in records:
        if r["seq"] == 1:
            out[(r["incident_id"], "firing")] += 1
        if r["state"] == "resolved":
            out[(r["incident_id"], "resolved")] += 1
    return out


def settle_and_count(alertmanager: Any, ids: set[str], want: Counter, log: Callable[[], str]) -> Counter:
    """Wait until the wanted notifications arrived, then a few more group intervals for any extra one."""
    wait_for("Alertmanager's notifications", lambda: Counter(alertmanager.receiver.notifications(ids)) >= want,
             timeout=90, log=log)
    time.sleep(4)  # 4 group_intervals and 4 re-posts: a duplicate would have come by now
    return Counter(alertmanager.receiver.notifications(ids))


def test_one_notification_per_incident_open_and_resolve(alertmanager, notifier, kafka_broker):
    topic = f"inc-{uuid.uuid4().hex[:8]}"
    hook = alertmanager.receiver.url + f"/hook/{topic}"
    n = notifier(topic, alertmanager=alertmanager, webhook=hook).start()
    t0 = 1_709_287_200_000
    a, b, c = lifecycle("checkout", t0), lifecycle("auth", t0), lifecycle("search", t0, resolve=False)
    records = [*a, b[0], a[1], b[1], b[2], *c]  # a's update repeated: the job's topic is at-least-once
    produce(kafka_broker, topic, records)
    ids = {r["incident_id"] for r in records}
    got = settle_and_count(alertmanager, ids, expected(records), n.log)
    assert got == expected(records), n.log()[-3000:]

    # the generic webhook: every transition exactly once, keyed incident_id:seq, the record as body plus
    # what it is to a receiver: firing at the opening, then updates, resolved at the resolve
    posts = alertmanager.receiver.received(f"/hook/{topic}")
    keys = [p.headers["Idempotency-Key"] for p in posts]
    assert sorted(keys) == sorted({f"{r['incident_id']}:{r['seq']}" for r in records}), keys
    by_key = {f"{r['incident_id']}:{r['seq']}": r for r in records}
    assert all({k: v for k, v in p.body.items() if k != "notification"} == by_key[key]
               for p, key in zip(posts, keys, strict=True))
    kinds = {"opened": "firing", "updated": "update", "resolved": "resolved"}
    assert all(p.body["notification"] == kinds[by_key[key]["transition"]] for p, key in zip(posts, keys, strict=True))

    # the open incident in Alertmanager: labels fixed at opening, annotations current
    (alert,) = [x for x in alertmanager.alerts() if x["labels"].get("incident_id") == c[0]["incident_id"]]
    assert alert["labels"] == {"alertname": "AnomalyIncident", "application": "search", "detector": "default",
                               "severity": "warning", "incident_id": c[0]["incident_id"]}
    assert alert["annotations"]["severity_now"] == "critical"
    assert alert["annotations"]["band"] == "[1, 9]" and alert["annotations"]["value"] == "44.5"
    summary = alert["annotations"]["summary"]
    assert "search: spike (default, avg over 60 s), open since 2024-03-01T10:00:00.000Z" in summary
    assert alert["startsAt"].startswith("2024-03-01T10:00:00")
    assert alert["generatorURL"] == f"http://dash.example:8050/incidents/{c[0]['incident_id']}"
    assert alert["status"]["state"] == "active"
    assert n.stop() == 0
    assert "1 repeats skipped" in n.log(), n.log()[-2000:]


def test_a_reopen_within_the_merge_gap_continues_the_firing_alert(alertmanager, notifier, kafka_broker):
    """Opened, resolved, reopened inside the merge gap (3 s here), resolved: the alert is kept firing through
    the gap, so Alertmanager's receiver gets one firing notification and, once the last gap ran out, one
    resolved; the webhook gets the reopen as an update."""
    topic = f"inc-{uuid.uuid4().hex[:8]}"
    hook = alertmanager.receiver.url + f"/hook/{topic}"
    n = notifier(topic, alertmanager=alertmanager, webhook=hook).start()
    t0, gap = 1_709_330_000_000, 3_000
    first = [record("bounce", t0, 1, "opened", "open"), record("bounce", t0, 2, "resolved", "resolved", gap_ms=gap)]
    ids = {first[0]["incident_id"]}
    wait_for("the partitions", lambda: "assigned" in n.log(), log=n.log)  # the gap counts from the produce
    produce(kafka_broker, topic, first)
    wait_for("the firing notification", lambda: alertmanager.receiver.notifications(ids) == [(*ids, "firing")],
             log=n.log)
    wait_for("the resolve kept firing", lambda: "kept firing until" in n.log(), log=n.log)
    time.sleep(1.5)  # over a group_interval (1 s): an alert that had ended would have been notified resolved
    assert alertmanager.receiver.notifications(ids) == [(*ids, "firing")]
    (alert,) = [a for a in alertmanager.alerts() if a["labels"]["incident_id"] in ids]
    assert alert["status"]["state"] == "active" and alert["annotations"]["state"] == "resolved"
    again = [record("bounce", t0, 3, "reopened", "open"), record("bounce", t0, 4, "resolved", "resolved", gap_ms=gap)]
    produce(kafka_broker, topic, again)
    produced = time.monotonic()
    wait_for("the resolved notification", lambda: len(alertmanager.receiver.notifications(ids)) == 2, timeout=30,
             log=n.log)
    (resolved,) = [r for r in alertmanager.receiver.received("/alertmanager")
                   if any(a["labels"]["incident_id"] in ids and a["status"] == "resolved" for a in r.body["alerts"])]
    assert resolved.at - produced > gap / 1000 - 1, "resolved before the gap ran out"
    time.sleep(2)  # two re-posts and group_intervals: the ended alert is not revived, nothing comes twice
    assert alertmanager.receiver.notifications(ids) == [(*ids, "firing"), (*ids, "resolved")], n.log()[-3000:]
    posts = alertmanager.receiver.received(f"/hook/{topic}")
    assert [(p.body["seq"], p.body["notification"]) for p in posts] == [
        (1, "firing"), (2, "resolved"), (3, "update"), (4, "resolved")]
    assert posts[1].body["reopen_until"] == first[1]["reopen_until"]


def test_sigkill_notifier_mid_stream_loses_nothing_and_repeats_nothing(alertmanager, notifier, kafka_broker):
    """Two SIGKILLs while transitions are in flight (resolves held, offsets not yet committed)."""
    topic = f"inc-{uuid.uuid4().hex[:8]}"
    hook = alertmanager.receiver.url + f"/hook/{topic}"
    n = notifier(topic, alertmanager=alertmanager, webhook=hook)
    t0 = 1_709_290_000_000
    batches = [
        [r for i in range(4) for r in lifecycle(f"app-{k}-{i}", t0 + i * 600_000, resolve=(i != 3))]
        for k in range(3)
    ]
    records = [r for batch in batches for r in batch]
    ids = {r["incident_id"] for r in records}
    n.start()
    for k, batch in enumerate(batches):
        produce(kafka_broker, topic, batch)
        if k < 2:  # kill once some of this batch's firing posts are through and its resolves are held
            wait_for("held resolves", lambda k=k: n.log().count("resolve held") >= 2 * (k + 1), log=n.log)
            n.kill()
            n.start()
    got = settle_and_count(alertmanager, ids, expected(records), n.log)
    assert got == expected(records), n.log()[-4000:]
    assert n.log().count("rebuilt") >= 3  # every start rebuilt its open incidents from the topic
    # the webhook got every transition at least once; a repeat only with the same idempotency key
    keys = Counter(p.headers["Idempotency-Key"] for p in alertmanager.receiver.received(f"/hook/{topic}"))
    assert set(keys) == {f"{r['incident_id']}:{r['seq']}" for r in records}


def test_a_second_notifier_under_the_same_instance_id_fences_the_first(alertmanager, notifier, kafka_broker, tmp_path):
    """Static membership (--instance-id, by default the host's): the group hands a restarted notifier its
    partitions at once (the SIGKILL test above restarts without waiting out the session timeout); a second
    live notifier under the same id takes them over, and the first stops, at its next commit, with a line that
    says why."""
    topic = f"inc-{uuid.uuid4().hex[:8]}"
    first = notifier(topic, alertmanager=alertmanager).start()
    wait_for("the first's partitions", lambda: "assigned" in first.log(), log=first.log)
    assert "static member 'anomaly-notify-" in first.log()
    (tmp_path / "second").mkdir()
    second = NotifierProcess(kafka_broker, topic, tmp_path / "second", alertmanager=alertmanager).start()
    try:
        wait_for("the second's partitions", lambda: "assigned" in second.log(), log=second.log)
        # the first learns it was fenced at its next commit: give it a record to deliver
        produce(kafka_broker, topic, lifecycle("fenced", 1_709_320_000_000))
        assert first.proc is not None
        code = first.proc.wait(60)
        assert code == 1, first.log()[-2000:]
        assert "another notifier joined group" in first.log() and "--instance-id" in first.log()
        assert "Traceback" not in first.log()
        assert second.proc is not None and second.proc.poll() is None, second.log()[-2000:]
    finally:
        second.stop()


def test_alertmanager_restart_and_outage(alertmanager, notifier, kafka_broker):
    """Open incidents survive an Alertmanager restart (re-posted, not re-sent); what arrives while it
    is down is retried with backoff and delivered once it is back."""
    topic = f"inc-{uuid.uuid4().hex[:8]}"
    n = notifier(topic, alertmanager=alertmanager).start()
    t0 = 1_709_300_000_000
    first = [r for app in ("pay", "cart") for r in lifecycle(app, t0, resolve=False)]
    produce(kafka_broker, topic, first)
    ids = {r["incident_id"] for r in first}
    wait_for("the firing notifications", lambda: len(alertmanager.receiver.notifications(ids)) == 2, log=n.log)

    alertmanager.restart()  # its alerts were in memory: gone until the notifier re-posts them
    wait_for("the re-post", lambda: {a["labels"]["incident_id"] for a in alertmanager.alerts()} >= ids, log=n.log)

    alertmanager.stop()
    late = lifecycle("late", t0)
    produce(kafka_broker, topic, [*late, *(record(a, t0, 3, "resolved", "resolved") for a in ("pay", "cart"))])
    wait_for("backoff", lambda: "attempt 2 failed" in n.log(), log=n.log)
    alertmanager.start()
    records = [*first, *late, *(record(a, t0, 3, "resolved", "resolved") for a in ("pay", "cart"))]
    ids = {r["incident_id"] for r in records}
    got = settle_and_count(alertmanager, ids, expected(records), n.log)
    assert got == expected(records), n.log()[-4000:]
    assert "delivered after" in n.log()


def test_rejected_and_malformed_records_go_to_the_dead_letter_topic(alertmanager, notifier, kafka_broker):
    topic = f"inc-{uuid.uuid4().hex[:8]}"
    hook = alertmanager.receiver.url + f"/hook/{topic}"
    t0 = 1_709_310_000_000
    refused = record("refused-by-hook", t0, 1, "opened", "open")
    alertmanager.receiver.answer = lambda path, body: (
        400 if isinstance(body, dict) and body.get("incident_id") == refused["incident_id"] else 200
    )
    n = notifier(topic, alertmanager=alertmanager, webhook=hook).start()
    backwards = record("backwards", t0, 1, "resolved", "resolved")
    backwards["resolved_at"] = "2024-03-01T09:00:00.000Z"  # before opened_at: Alertmanager answers 400
    good = lifecycle("fine", t0)
    produce(kafka_broker, topic, [b"{not json", backwards, refused, *good])
    wait_for("the good incident's resolve", lambda: ("fine" in n.log() and "resolved (seq 3" in n.log()),
             log=n.log)
    dead = consume_all(kafka_broker.bootstrap_servers, f"{topic}-dlq", timeout_s=20)
    reasons = sorted(r.header("anomaly.reason").decode() for r in dead)
    assert reasons == ["alertmanager_rejected", "invalid_incident", "webhook_rejected"], n.log()[-3000:]
    by_reason = {r.header("anomaly.reason").decode(): r for r in dead}
    assert by_reason["invalid_incident"].value == b"{not json"
    assert b"400" in by_reason["alertmanager_rejected"].header("anomaly.detail")
    assert json.loads(by_reason["alertmanager_rejected"].header("anomaly.source"))["topic"] == topic
    assert n.proc is not None and n.proc.poll() is None  # still running
    alertmanager.receiver.answer = lambda path, body: 200


def test_bad_options_name_the_field():
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tools.notify", "--bootstrap-servers", "127.0.0.1:1", *args],
                              cwd=REPO, capture_output=True, text=True, timeout=60)

    out = run()
    assert out.returncode == 2 and "--alertmanager-url: give --alertmanager-url, --webhook-url or both" in out.stderr
    out = run("--webhook-url", "ftp://x")
    assert out.returncode == 2 and "--webhook-url: must be an http:// or https:// URL" in out.stderr
    out = run("--alertmanager-url", "http://127.0.0.1:9093", "--alert-ttl-seconds", "100")
    assert out.returncode == 2 and "--alert-ttl-seconds: must be at least 3 x --repost-seconds" in out.stderr


def test_maintenance_windows_become_silences_once(alertmanager, notifier, kafka_broker, tmp_path):
    """The job config's windows become Alertmanager silences; an incident of a silenced application
    pages nobody; a restarted notifier finds its silences and creates none twice."""
    prefix = f"m{uuid.uuid4().hex[:6]}"
    now = time.time()
    iso = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))  # noqa: E731
    config = tmp_path / "job.yaml"  # a whole job config: the notifier reads it with the job's loader
    windows = [
        {"name": "deploy", "applications": f"{prefix}-*", "from": iso(now - 3600), "to": iso(now + 3600)},
        {"name": "backup", "applications": f"{prefix}-db?", "weekdays": ["mon", "tue", "wed", "thu", "fri", "sat",
         "sun"], "start": "02:00", "end": "03:00", "timezone": "Europe/Berlin", "freeze_model": True},
    ]
    config.write_text(json.dumps({"checkpoint_dir": str(tmp_path / "checkpoints"), "streams": [{
        "name": "web", "source": {"bootstrap_servers": kafka_broker.bootstrap_servers, "topics": ["metrics"]},
        "aggregation": {"agg_function": "avg", "agg_window_millis": 60_000}, "detectors": [{"name": "ema"}],
        "sinks": {"output_topic": "out", "dead_letter_topic": "dlq"}, "incidents": {"maintenance": windows}}]}))
    topic = f"inc-{uuid.uuid4().hex[:8]}"
    n = notifier(topic, alertmanager=alertmanager, extra=("--config", str(config), "--silence-refresh-seconds", "1"))
    n.start()

    def ours() -> list[dict[str, Any]]:
        return [s for s in alertmanager.silences()
                if s["createdBy"] == "anomaly-notify" and prefix in s["comment"] and s["status"]["state"] != "expired"]

    wait_for("two silences", lambda: len(ours()) == 2, log=n.log)
    deploy = next(s for s in ours() if "deploy" in s["comment"])
    assert deploy["status"]["state"] == "active"
    assert {"name": "application", "value": f"{prefix}-.*", "isRegex": True, "isEqual": True} in deploy["matchers"]
    assert next(s for s in ours() if "backup" in s["comment"])["status"]["state"] in ("active", "pending")

    silenced = lifecycle(f"{prefix}-web", 1_709_400_000_000, resolve=False)
    produce(kafka_broker, topic, silenced)
    ids = {silenced[0]["incident_id"]}
    wait_for("the silenced alert", lambda: any(
        a["labels"]["incident_id"] in ids and a["status"]["state"] == "suppressed" for a in alertmanager.alerts()),
        log=n.log)
    assert n.stop() == 0
    n.start()
    wait_for("the restarted notifier's silence check", lambda: n.log().count("assigned") >= 2, log=n.log)
    time.sleep(3)  # three refreshes
    assert len(ours()) == 2, ours()
    assert alertmanager.receiver.notifications(ids) == []  # silenced: nobody paged
    assert n.log().count("silence created") == 2, n.log()[-2000:]


def test_feedback_cli_produces_the_record(kafka_broker):
    topic = f"fb-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic, partitions=2)
    incident = "ab" * 16
    base = [sys.executable, "-m", "tools.feedback", "--bootstrap-servers", kafka_broker.bootstrap_servers,
            "--topic", topic, "--application", "checkout", "--incident", incident]
    out = subprocess.run([*base, "--label", "false_positive", "--by", "me", "--comment", "deploy"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"feedback false_positive on incident {incident} of 'checkout' sent to '{topic}'" in out.stdout
    bad = subprocess.run([*base, "--label", "wrong"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--label: must be one of false_positive, expected, true_positive, new_normal" in (
        bad.stderr)
    (got,) = consume_all(kafka_broker.bootstrap_servers, topic, timeout_s=20)
    assert got.key == b"checkout"
    value = json.loads(got.value)
    assert {k: value[k] for k in ("application", "incident_id", "label", "by", "comment")} == {
        "application": "checkout", "incident_id": incident, "label": "false_positive", "by": "me",
        "comment": "deploy"}
    assert value["ts"].endswith("Z")


def test_a_hanging_webhook_is_retried_after_its_timeout(alertmanager, notifier, kafka_broker):
    """The webhook answers only after 5 s the first two times (the notifier gives up after 3 s and
    retries): every transition arrives, a repeat only with its idempotency key, the notifier goes on."""
    topic = f"inc-{uuid.uuid4().hex[:8]}"
    path = f"/hook/{topic}"
    hangs = {"left": 2}

    def answer(request_path: str, body: Any) -> int:
        if request_path == path and hangs["left"] > 0:
            hangs["left"] -= 1
            time.sleep(5)
        return 200

    alertmanager.receiver.answer = answer
    try:
        n = notifier(topic, webhook=alertmanager.receiver.url + path).start()
        records = lifecycle("slow", 1_709_320_000_000)
        produce(kafka_broker, topic, records)
        keys = {f"{r['incident_id']}:{r['seq']}" for r in records}
        wait_for("every transition", lambda: {p.headers["Idempotency-Key"] for p in
                                              alertmanager.receiver.received(path)} == keys, log=n.log)
        assert "timed out" in n.log() and "delivered after" in n.log(), n.log()[-2000:]
        wait_for("the last delivery line", lambda: "resolved (seq 3" in n.log(), log=n.log)
    finally:
        alertmanager.receiver.answer = lambda p, b: 200
