"""Keep firing: what each incident record is to a receiver (incidents/paging.py), and the notifier doing
exactly that (tools/notify.py with fake targets and clocks; no broker, no Alertmanager). The bench
(bench/incident_quality.py) counts pages with the same function."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from kafka.structs import TopicPartition

from detectors.base import BatchResult
from incidents.paging import ENDED, FIRING, OPEN, RESOLVED, UPDATE, hold_ms, kinds, ms_of, step
from incidents.replay import series_incidents
from incidents.rules import parse_settings
from jobs.config import ConfigError
from tests.bench_module import load_bench
from tests.test_notify import record
from tools.notify import Notifier, NotifyConfig, build_parser, config_from_args, validate

T0 = 1_709_287_200_000
MIN = 60_000


def bounce(gap_ms: int | None = 30 * MIN) -> list[dict[str, Any]]:
    """opened, updated, resolved (may reopen for gap_ms), reopened 1 min later, flapping, resolved."""
    return [
        record("web", T0, 1, "opened", "open"),
        record("web", T0, 2, "updated", "open", severity="critical"),
        record("web", T0, 3, "resolved", "resolved", gap_ms=gap_ms),
        record("web", T0, 4, "reopened", "open"),
        record("web", T0, 5, "resolved", "resolved", gap_ms=gap_ms),
        record("web", T0, 6, "flapping", "flapping"),
        record("web", T0, 7, "resolved", "resolved", gap_ms=gap_ms),
    ]


def test_a_reopen_inside_the_gap_is_an_update_and_after_it_pages():
    assert kinds(bounce()) == [FIRING, UPDATE, RESOLVED, UPDATE, RESOLVED, UPDATE, RESOLVED]
    # keep firing 0 (the notifier's old behaviour): every reopen and flapping pages again
    assert kinds(bounce(), keep_firing_ms=0) == [FIRING, UPDATE, RESOLVED, FIRING, RESOLVED, FIRING, RESOLVED]
    # a resolve that cannot reopen (no reopen_until: feedback, split, an older job) ends the alert at once
    assert kinds(bounce(gap_ms=None)) == kinds(bounce(), keep_firing_ms=0)
    # a hold shorter than the minute to the reopen: it pages
    assert kinds(bounce(), keep_firing_ms=30_000)[3] == FIRING
    # the reopen exactly at the end of the hold still continues it (Alertmanager ends an alert after endsAt)
    assert kinds(bounce(), keep_firing_ms=MIN)[3] == UPDATE


def test_hold_is_what_is_left_of_the_gap_at_most_keep_firing():
    resolved = record("web", T0, 3, "resolved", "resolved", gap_ms=30 * MIN)
    assert hold_ms(resolved) == 30 * MIN
    assert hold_ms(resolved, 120_000) == 120_000 and hold_ms(resolved, 0) == 0
    assert hold_ms(resolved, 10**9) == 30 * MIN  # past the gap the job opens a new incident anyway
    assert hold_ms(record("web", T0, 1, "opened", "open")) == 0
    feedback = dict(resolved, transition="feedback", event_ts=resolved["reopen_until"])
    assert hold_ms(feedback) == 0  # nothing left of the gap
    assert ms_of("2024-03-01T10:00:00.000Z") == T0 == ms_of("2024-03-01T11:00:00+01:00")


def test_a_resolved_record_never_revives_an_ended_alert():
    resolved = record("web", T0, 3, "resolved", "resolved", gap_ms=30 * MIN)
    late = dict(resolved, seq=4, transition="feedback", feedback="true_positive")
    kind, until = step(OPEN, resolved, T0, keep_firing_ms=None)
    assert (kind, until) == (RESOLVED, T0 + 30 * MIN)
    # feedback inside the hold: an update, the hold not extended
    assert step(until, late, T0 + MIN) == (UPDATE, until)
    # after it: still an update, and the alert stays ended
    assert step(until, late, until + 1) == (UPDATE, until)
    assert step(ENDED, resolved, T0) == (RESOLVED, ENDED)


def test_the_job_only_reopens_within_the_gap_so_with_keep_firing_only_openings_page():
    """The state machine's records through the rule: reopens and flapping continue the alert."""
    flags = np.zeros(400, dtype=bool)
    flags[[10, 14, 18, 22, 26, 30, 200]] = True
    result = BatchResult(np.zeros(400), np.ones(400), np.where(flags, 0.9999, 0.5), flags)
    settings = parse_settings({"resolve_after": 2, "merge_gap_millis": 5 * MIN, "flapping_reopens": 2})
    records = series_incidents("web", "default", T0 + MIN * np.arange(400), np.zeros(400), result, settings)
    transitions = [r["transition"] for r in records]
    assert "reopened" in transitions and "flapping" in transitions
    got = kinds(records)
    assert [r["transition"] for r, k in zip(records, got, strict=True) if k == FIRING] == ["opened", "opened"]
    assert [r["transition"] for r, k in zip(records, kinds(records, 0), strict=True) if k == FIRING] == [
        t for t in transitions if t in ("opened", "reopened", "flapping")]


class FakeAlertmanager:
    name, url = "alertmanager", "http://am"

    def __init__(self) -> None:
        self.posts: list[list[dict[str, Any]]] = []

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        if alerts:
            self.posts.append(alerts)


class FakeWebhook:
    name, url = "webhook", "http://hook"

    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []

    def post_transition(self, rec: dict[str, Any], notification: str) -> None:
        self.sent.append((rec["seq"], notification))


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


def fake_notifier(keep_firing_s: float | None = None, resolve_hold_s: float = 0.0) -> tuple[Notifier, Clock]:
    clock = Clock(T0)
    config = NotifyConfig("broker:9092", alertmanager_url="http://am", webhook_url="http://hook",
                          resolve_hold_s=resolve_hold_s, keep_firing_s=keep_firing_s)
    notifier = Notifier(config, clock=clock, wall=clock)
    notifier.am, notifier.webhook = FakeAlertmanager(), FakeWebhook()
    return notifier, clock


def feed(notifier: Notifier, clock: Clock, records: list[dict[str, Any]]) -> None:
    """Each record produced and handled at its event time (a job without lag)."""
    partition = TopicPartition("incidents", 0)
    for offset, rec in enumerate(records):
        clock.ms = ms_of(rec["event_ts"])
        message = SimpleNamespace(offset=offset, value=json.dumps(rec).encode(), timestamp=clock.ms)
        notifier.handle(partition, message)
        notifier.flush_due()


@pytest.mark.parametrize("keep", [None, 0.0, 30.0])
def test_the_notifier_sends_what_the_rule_and_the_bench_count(keep):
    records = bounce()
    notifier, clock = fake_notifier(keep)
    feed(notifier, clock, records)
    keep_ms = None if keep is None else keep * 1000
    assert notifier.webhook.sent == list(enumerate(kinds(records, keep_ms), start=1))
    quality = load_bench("incident_quality")  # the bench's pages: the records the notifier sends as firing
    sent = notifier.webhook.sent
    pages = [(ms_of(r["event_ts"]), r["transition"]) for r, (_, k) in zip(records, sent, strict=True) if k == FIRING]
    assert quality.notifications(records, keep_ms) == pages


def test_alertmanager_gets_the_resolve_kept_firing_and_re_posts_never_push_it():
    notifier, clock = fake_notifier()
    records = bounce()[:3]  # opened, updated, resolved at T0 + 3 min, may reopen for 30 min
    feed(notifier, clock, records)
    am = notifier.am
    resolve = am.posts[-1][0]
    assert resolve["endsAt"] == "2024-03-01T10:33:00.000Z" and resolve["annotations"]["state"] == "resolved"
    clock.ms += 10 * MIN
    notifier.tick()  # a re-post inside the hold: the same end
    assert am.posts[-1][0]["endsAt"] == "2024-03-01T10:33:00.000Z"
    notifier.next_repost = clock() + 3600  # no re-post due
    clock.ms = ms_of("2024-03-01T10:33:00.000Z") + 1
    posts = len(am.posts)
    notifier.tick()  # at its end, before the next re-post is due, once more: Alertmanager keeps a firing
    assert len(am.posts) == posts + 1  # alert's latest endsAt, maybe a re-post's ttl ahead; this ends it
    assert am.posts[-1][0]["endsAt"] == "2024-03-01T10:33:00.000Z"
    notifier.next_repost = 0
    notifier.tick()  # ... and never again
    assert len(am.posts) == posts + 1
    # an open incident's re-post is pushed ahead as before
    feed(notifier, clock, [record("db", T0 + 40 * MIN, 1, "opened", "open")])
    notifier.next_repost = 0
    notifier.tick()
    assert am.posts[-1][0]["endsAt"] == "2024-03-01T10:46:00.000Z"


def test_a_reopen_after_the_hold_pages_again():
    """A job lagging more than the gap: the reopen reaches the notifier after the alert ended."""
    notifier, clock = fake_notifier()
    records = bounce(gap_ms=2 * MIN)[:4]
    feed(notifier, clock, records[:3])
    clock.ms += 5 * MIN
    partition = TopicPartition("incidents", 0)
    notifier.handle(partition, SimpleNamespace(offset=3, value=json.dumps(records[3]).encode(), timestamp=clock.ms))
    assert notifier.webhook.sent[-1] == (4, FIRING)
    assert notifier.am.posts[-1][0]["endsAt"] == "2024-03-01T10:13:00.000Z"  # now + ttl


def test_keep_firing_past_group_wait_needs_no_resolve_hold():
    notifier, clock = fake_notifier(resolve_hold_s=60)
    feed(notifier, clock, bounce()[:3])  # resolved 1 min after the firing post: kept firing 30 min anyway
    assert not notifier.pending and notifier.webhook.sent[-1] == (3, RESOLVED)
    notifier, clock = fake_notifier(keep_firing_s=0, resolve_hold_s=180)
    feed(notifier, clock, bounce()[:3])  # not kept firing: held for Alertmanager's group_wait as before
    assert len(notifier.pending) == 1 and notifier.webhook.sent[-1] == (2, UPDATE)


@pytest.mark.parametrize(("value", "message"), [
    ("-1", "--keep-firing-seconds: must be merge-gap or a number of seconds >= 0, got -1.0"),
    ("soon", "--keep-firing-seconds: must be merge-gap or a number of seconds >= 0, got 'soon'"),
    ("nan", "--keep-firing-seconds: must be merge-gap or a number of seconds >= 0, got nan"),
])
def test_keep_firing_option_is_validated_naming_it(value, message):
    args = build_parser().parse_args(["--bootstrap-servers", "b:1", "--webhook-url", "http://h",
                                      "--keep-firing-seconds", value])
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_args(args)


def test_keep_firing_option_values():
    base = ["--bootstrap-servers", "b:1", "--webhook-url", "http://h"]
    assert config_from_args(build_parser().parse_args(base)).keep_firing_s is None  # the merge gap
    assert config_from_args(build_parser().parse_args([*base, "--keep-firing-seconds", "0"])).keep_firing_s == 0
    assert validate(NotifyConfig("b:1", webhook_url="http://h", keep_firing_s=90)).keep_firing_s == 90
