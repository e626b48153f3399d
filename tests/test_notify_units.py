"""The notifier's pure parts: incident records, their Alertmanager alert, maintenance windows and
their silences, feedback records. No broker, no Alertmanager."""

from __future__ import annotations

import fnmatch
import json
import re
from datetime import datetime, timezone

import pytest

from jobs.config import ConfigError, parse_config
from tests.test_notify import record
from tools.feedback import feedback_record
from tools.maintenance import glob_to_regex, occurrence, silence_for, windows_of
from tools.notify_targets import InvalidIncident, parse_incident, to_alert

T0 = 1_709_287_200_000  # 2024-03-01T10:00:00Z
NOW = datetime(2026, 12, 6, 16, 0, tzinfo=timezone.utc)  # a Sunday


def encoded(**changes) -> bytes:
    r = record("checkout", T0, 1, "opened", "open")
    r.update(changes)
    return json.dumps(r).encode()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "value: the record has no value"),
        (b"\xff", "value: not UTF-8 JSON"),
        (b"[1]", "value: not a JSON object"),
        (encoded(seq="1"), "seq: missing or not a int"),
        (encoded(seq=True), "seq: missing or not a int"),
        (encoded(seq=0), "seq: must be 1 or more"),
        (encoded(incident_id="ABC"), "incident_id: must be 32 lowercase hex"),
        (encoded(state="closed"), "state: must be one of open, flapping, no_data, resolved"),
        (encoded(severity="page"), "severity: must be one of info, warning, critical"),
        (encoded(opened_at="yesterday"), "opened_at: not an ISO-8601 timestamp"),
        (encoded(state="resolved", resolved_at=None), "resolved_at: required when state is resolved"),
        (encoded(application=""), "application: empty"),
    ],
)
def test_a_record_that_is_not_an_incident_is_refused_naming_the_field(value, message):
    with pytest.raises(InvalidIncident, match=re.escape(message)):
        parse_incident(value)


def test_alert_of_an_open_and_a_resolved_incident():
    opened = parse_incident(encoded(severity="critical"))
    alert = to_alert(opened, "warning", "http://dash:8050/", NOW, 300)
    assert alert["labels"]["severity"] == "warning"  # the label given, never the record's current one
    assert alert["annotations"]["severity_now"] == "critical"
    assert alert["startsAt"] == "2024-03-01T10:00:00.000Z"
    assert alert["endsAt"] == "2026-12-06T16:05:00.000Z"  # now + ttl while open
    assert alert["generatorURL"] == f"http://dash:8050/incidents/{opened['incident_id']}"
    resolved = parse_incident(json.dumps(record("checkout", T0, 3, "resolved", "resolved")).encode())
    alert = to_alert(resolved, "warning", "http://dash:8050", NOW, 300)
    assert alert["endsAt"] == resolved["resolved_at"]
    assert "resolved: clean" in alert["annotations"]["summary"]
    future = dict(resolved, resolved_at="2030-01-01T00:00:00.000Z")  # never a future end: it would keep firing
    assert to_alert(future, "warning", "http://dash", NOW, 300)["endsAt"] == "2026-12-06T16:00:00.000Z"


@pytest.mark.parametrize("glob", ["checkout*", "db-?", "a.b+c(d)", "[!x]y*", "[a-c]pp", "exact", "*-prod-*"])
def test_glob_becomes_a_regex_matching_the_same_names(glob):
    names = ["checkout", "checkout-eu", "db-1", "db-12", "a.b+c(d)", "axb+c(d)", "zy", "xy", "app", "dpp",
             "exact", "exactly", "web-prod-1", "web-dev-1", "y"]
    regex = re.compile(glob_to_regex(glob))
    assert [n for n in names if regex.fullmatch(n)] == [n for n in names if fnmatch.fnmatchcase(n, glob)]


def job(*maintenance: list, incidents_topic: str | None = "incidents") -> dict:
    """A job config (the job's own parser reads it) with one stream per list of windows."""
    return {"checkpoint_dir": "/tmp/anomaly-notify-units", "streams": [
        {"name": f"s{i}", "source": {"bootstrap_servers": "broker:9092", "topics": ["metrics"]},
         "aggregation": {"agg_function": "avg", "agg_window_millis": 60_000}, "detectors": [{"name": "ema"}],
         "sinks": {"output_topic": "out", "dead_letter_topic": "dlq", "incidents_topic": incidents_topic},
         "incidents": {"maintenance": list(entries)}}
        for i, entries in enumerate(maintenance)]}


def windows(*entries):
    return windows_of(parse_config(job(list(entries))))


def test_recurring_window_occurrence_in_its_time_zone_across_midnight_and_dst():
    (w,) = windows({"name": "backup", "applications": "db-*", "weekdays": ["mon", "sun"],
                    "start": "23:30", "end": "01:00", "timezone": "Europe/Berlin"})
    # Sunday 16:00 UTC = 17:00 Berlin (CET): the next one starts Sunday 23:30 Berlin = 22:30 UTC
    assert occurrence(w, NOW) == (datetime(2026, 12, 6, 22, 30, tzinfo=timezone.utc),
                                 datetime(2026, 12, 7, 0, 0, tzinfo=timezone.utc))
    # inside it (Monday 00:30 Berlin): the one going on
    inside = datetime(2026, 12, 6, 23, 30, tzinfo=timezone.utc)
    assert occurrence(w, inside)[0] == datetime(2026, 12, 6, 22, 30, tzinfo=timezone.utc)
    # summer time: 23:30 CEST = 21:30 UTC
    summer = datetime(2026, 7, 5, 12, 0, tzinfo=timezone.utc)  # a Sunday
    assert occurrence(w, summer)[0] == datetime(2026, 7, 5, 21, 30, tzinfo=timezone.utc)


def test_one_off_window_and_its_silence():
    (w,) = windows({"name": "deploy", "applications": "checkout*", "from": "2026-12-06T15:00:00Z",
                    "to": "2026-12-06T17:00:00+00:00"})
    assert occurrence(w, NOW) == (datetime(2026, 12, 6, 15, tzinfo=timezone.utc),
                                 datetime(2026, 12, 6, 17, tzinfo=timezone.utc))
    assert occurrence(w, datetime(2026, 12, 6, 17, tzinfo=timezone.utc)) is None  # over
    silence = silence_for(w, *occurrence(w, NOW))
    assert silence["matchers"] == [
        {"name": "alertname", "value": "AnomalyIncident", "isRegex": False, "isEqual": True},
        {"name": "application", "value": "checkout.*", "isRegex": True, "isEqual": True},
    ]
    assert silence["comment"] == (
        "maintenance window deploy (checkout*): 2026-12-06T15:00:00.000Z - 2026-12-06T17:00:00.000Z")


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"name": "x", "applications": "a", "from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
         "streams[0].incidents.maintenance[0].to: must be after from"),
        ({"name": "x", "applications": "a", "weekdays": ["mon"], "start": "25:00", "end": "02:00"},
         "streams[0].incidents.maintenance[0].start"),
        ({"name": "x", "applications": "a", "weekdays": ["mon"], "start": "01:00", "end": "02:00",
          "timezone": "Mars/Olympus"}, "streams[0].incidents.maintenance[0].timezone"),
    ],
)
def test_malformed_maintenance_window_is_refused_naming_the_field(entry, field):
    """The job's own parser (incidents.rules) reads the windows: the same errors, the same field names."""
    with pytest.raises(ValueError, match=re.escape(field)):
        windows(entry)


def test_window_ending_at_midnight_and_a_window_in_two_streams():
    entry = {"name": "late", "applications": "*", "weekdays": ["sun"], "start": "22:00", "end": "24:00"}
    (w,) = windows_of(parse_config(job([entry], [entry])))
    assert occurrence(w, NOW) == (datetime(2026, 12, 6, 22, tzinfo=timezone.utc),
                                  datetime(2026, 12, 7, 0, tzinfo=timezone.utc))


def test_notifier_takes_topic_and_servers_from_the_job_config(tmp_path):
    import yaml

    from tools.notify import build_parser, config_from_args

    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job([], incidents_topic="team-incidents")))
    args = build_parser().parse_args(["--config", str(path), "--alertmanager-url", "http://127.0.0.1:9093"])
    config = config_from_args(args)
    assert (config.bootstrap_servers, config.topic) == ("broker:9092", "team-incidents")
    args = build_parser().parse_args(["--config", str(path), "--topic", "mine", "--bootstrap-servers", "b:1",
                                      "--alertmanager-url", "http://127.0.0.1:9093"])
    assert (config_from_args(args).bootstrap_servers, config_from_args(args).topic) == ("b:1", "mine")
    path.write_text(yaml.safe_dump(job([], [], incidents_topic=None) | {"streams": [
        {**job([])["streams"][0], "sinks": {"output_topic": "o", "dead_letter_topic": "d", "incidents_topic": "a"}},
        {**job([])["streams"][0], "name": "t", "sinks": {"output_topic": "o", "dead_letter_topic": "d",
                                                         "incidents_topic": "b"}}]}))
    with pytest.raises(ConfigError, match=re.escape("--topic: the config's streams write incidents to ['a', 'b']")):
        config_from_args(build_parser().parse_args(["--config", str(path), "--webhook-url", "http://h"]))


def test_feedback_record_is_validated():
    rec = feedback_record("checkout", "0" * 32, "false_positive", by="me", now=NOW)
    assert rec == {"application": "checkout", "incident_id": "0" * 32, "label": "false_positive",
                   "ts": "2026-12-06T16:00:00.000Z", "by": "me", "comment": None}
    with pytest.raises(ConfigError, match="label: must be one of false_positive, expected, true_positive"):
        feedback_record("checkout", "0" * 32, "bogus")
    with pytest.raises(ConfigError, match="incident: must be the incident's id"):
        feedback_record("checkout", "xyz", "expected")
    with pytest.raises(ConfigError, match="application: must be a non-empty name"):
        feedback_record(" ", "0" * 32, "expected")


def test_demo_report_counts_lost_and_repeated_notifications():
    from collections import Counter

    from tools.demo_notify import report
    from tools.synthetic import InjectedAnomaly

    t = 1_704_085_200_000  # 2024-01-01T05:00:00Z
    rows = [
        {"incident_id": "a" * 32, "application": "auth", "detector": "default", "opened_at": t,
         "resolved_at": t + 600_000, "state": "resolved", "severity": "warning", "window_count": 1},
        {"incident_id": "b" * 32, "application": "auth", "detector": "ema", "opened_at": t,
         "resolved_at": None, "state": "open", "severity": "critical", "window_count": 3},
    ]
    spike = InjectedAnomaly("auth", "2024-01-01T05:02:00Z", "spike", "2024-01-01T05:03:00Z", 50.0)
    once = Counter({("a" * 32, "firing"): 1, ("a" * 32, "resolved"): 1, ("b" * 32, "firing"): 1})
    lines, ok = report(rows, once, [spike], "default", 300_000)
    assert ok
    assert "injected spike 05:02 in auth: 1 incident(s), 1 notification(s)" in lines
    assert "lost 0, twice 0" in lines[-1] and "ema 1 beside default" in lines[-1]
    lines, ok = report(rows, once + Counter({("b" * 32, "firing"): 1}) - Counter({("a" * 32, "resolved"): 1}),
                       [spike], "default", 300_000)
    assert not ok and "lost 1, twice 1" in lines[-1]


def test_the_notifier_is_a_static_group_member_named_after_its_host_unless_told_otherwise():
    import socket

    from tools.notify import build_parser, config_from_args

    def instance_id(*options: str) -> str | None:
        args = build_parser().parse_args(["--bootstrap-servers", "b:1", "--webhook-url", "http://h", *options])
        return config_from_args(args).instance_id

    assert instance_id() == f"anomaly-notify-{socket.gethostname()}"
    assert instance_id("--instance-id", "notify-0") == "notify-0"  # e.g. a StatefulSet's pod name
    assert instance_id("--instance-id", "none") is None  # a dynamic member
    with pytest.raises(ConfigError, match="--instance-id: must not be empty"):
        instance_id("--instance-id", " ")
