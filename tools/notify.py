"""The notifier: ``python -m tools.notify`` (or ``anomaly-notify``) -- incidents to Alertmanager and webhooks.

It consumes the job's ``incidents`` topic (one record per transition, key = incident_id) with
kafka-python in a consumer group, with manual commits, and hands every transition on:

* to **Prometheus Alertmanager** (``--alertmanager-url``): the incident's alert through the v2 API
  (see :mod:`tools.notify_targets` for the mapping). Alertmanager keeps alerts in memory and ends
  one that nobody re-posts, so every open incident is re-posted every ``--repost-seconds`` with an
  ``endsAt`` ``--alert-ttl-seconds`` ahead; routing, grouping, silencing and receivers are
  Alertmanager's. A resolve is held until ``--resolve-hold-seconds`` after the notifier first
  posted the incident as firing: Alertmanager sends nothing for a group whose alerts all resolved
  before its ``group_wait`` ran out, which would lose the page of a short incident (or of a
  replayed one), so the hold must exceed the route's ``group_wait``;
* to a **JSON webhook** (``--webhook-url``): the record, once per transition, with
  ``Idempotency-Key: <incident_id>:<seq>`` and a ``notification`` field: ``firing``, ``update`` or
  ``resolved`` (below).

**Keep firing.** A cleanly resolved incident can reopen under the same id until its record's
``reopen_until`` (the job's merge gap after the resolve). Its alert is not ended at the resolve:
it is posted with ``endsAt`` = the time the job produced the resolve (the Kafka record's
timestamp, so the same after a restart) + that gap (at most ``--keep-firing-seconds``; 0: end at
once, the old behaviour). A reopen inside it continues the firing alert, so Alertmanager sends no
new notification. Without one, the notifier posts the alert once more when that end comes, as
resolved: Alertmanager keeps the latest ``endsAt`` a firing alert was given, which an earlier
re-post may have put ``--alert-ttl-seconds`` ahead, past a short hold; Alertmanager sends the
resolved notification then (one group_interval later at most), and ends the alert by itself at its
``endsAt`` if the notifier is gone. The periodic re-post posts such a held alert with that same
``endsAt`` (for an Alertmanager restarted meanwhile) and never pushes it forward. The webhook
gets the same verdict per record (incidents/paging.py, also what bench/incident_quality.py
counts): ``firing`` when the alert starts (a page), ``update`` while it goes on (a reopen inside
the hold included), ``resolved`` at the resolve itself, sent at once; its ``reopen_until`` says
until when a reopen may still come as an update.

Offsets are committed only after every target accepted the record (or it was dead-lettered), so
a crash re-sends at most the uncommitted tail, which Alertmanager deduplicates (same labels) and a
webhook receiver can drop by its key. A target that is down, times out or answers 5xx is retried
with exponential backoff (up to ``--max-backoff-seconds``), never skipped; a 4xx answer (or a record
that is not an incident) goes to the dead-letter topic with a reason and the notifier goes on.

**A restart resumes at once.** The notifier is a static member of its group (KIP-345,
``--instance-id``, by default from the host's name): restarted under the same id (a crash, a pod
restart) it takes its partitions back without a rebalance, where a new dynamic member would wait
until the group expired the dead one (the session timeout). Two notifiers of one group need two ids;
the one fenced by the other stops with a line that says so.

**State after a restart.** The open incidents live in memory. When the group assigns a partition,
the notifier rebuilds them from the topic: it reads the partition from the first record younger
than ``--replay-hours`` up to the group's committed offset (already delivered: applied, not sent),
then re-posts every open one (idempotent for Alertmanager). The replay must reach back further
than the job's longest incident (its ``max_duration``), so that every open incident's first
record -- the one whose severity becomes its label -- is read again. A partition the group never
committed starts at that same point, not at the topic's beginning. Records with a ``seq`` at or
below the one already handled are repeats from the job's at-least-once topic and are not sent again.

With ``--config`` the notifier reads the job's config file with the job's own loader: its
maintenance windows (each stream's ``incidents.maintenance``) become Alertmanager silences for their
current or next occurrence (:mod:`tools.maintenance`), and it gives the incidents topic and the
bootstrap servers unless ``--topic``/``--bootstrap-servers`` do.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import urlparse

from kafka.errors import FencedInstanceIdError

from incidents.paging import ENDED, FIRING, step
from incidents.rules import Maintenance
from jobs.config import ConfigError, JobConfig, load_config
from tools.maintenance import sync_silences, windows_of
from tools.notify_targets import (
    AlertmanagerTarget,
    InvalidIncident,
    TargetRejected,
    TargetUnavailable,
    WebhookTarget,
    is_resolved,
    parse_incident,
    to_alert,
)

T = TypeVar("T")
PREFIX = "[notify]"


@dataclass(frozen=True)
class NotifyConfig:
    """Everything the notifier needs; :func:`validate` names the field of any error."""

    bootstrap_servers: str
    topic: str = "incidents"
    group_id: str = "anomaly-notify"
    instance_id: str | None = None  # the group's static member id (KIP-345); None: a dynamic member
    alertmanager_url: str | None = None
    webhook_url: str | None = None
    dead_letter_topic: str = "incidents-dead-letters"
    dashboard_url: str = "http://127.0.0.1:8050"
    repost_s: float = 60.0
    alert_ttl_s: float = 300.0
    resolve_hold_s: float = 60.0
    keep_firing_s: float | None = None  # None: each resolve's merge gap (its reopen_until); 0: end at the resolve
    replay_hours: float = 168.0
    timeout_s: float = 10.0
    max_backoff_s: float = 60.0
    silence_refresh_s: float = 300.0
    maintenance: tuple[Maintenance, ...] = ()


def _url(value: str | None, name: str) -> None:
    if value is None:
        return
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(name, f"must be an http:// or https:// URL, got {value!r}")


def validate(config: NotifyConfig) -> NotifyConfig:
    """Check the config before anything connects; errors name the option."""
    if not config.bootstrap_servers.strip():
        raise ConfigError("--bootstrap-servers", "is required")
    for name, text in (("--topic", config.topic), ("--group", config.group_id)):
        if not text.strip():
            raise ConfigError(name, "must not be empty")
    if config.alertmanager_url is None and config.webhook_url is None:
        raise ConfigError("--alertmanager-url", "give --alertmanager-url, --webhook-url or both: nothing to notify")
    _url(config.alertmanager_url, "--alertmanager-url")
    _url(config.webhook_url, "--webhook-url")
    _url(config.dashboard_url, "--dashboard-url")
    for name, value in (
        ("--repost-seconds", config.repost_s),
        ("--timeout-seconds", config.timeout_s),
        ("--max-backoff-seconds", config.max_backoff_s),
        ("--replay-hours", config.replay_hours),
        ("--silence-refresh-seconds", config.silence_refresh_s),
    ):
        if not value > 0:
            raise ConfigError(name, f"must be > 0, got {value}")
    if config.resolve_hold_s < 0:
        raise ConfigError("--resolve-hold-seconds", f"must be >= 0, got {config.resolve_hold_s}")
    if config.keep_firing_s is not None and not (math.isfinite(config.keep_firing_s) and config.keep_firing_s >= 0):
        raise ConfigError("--keep-firing-seconds", f"must be merge-gap or a number of seconds >= 0, got "
                          f"{config.keep_firing_s}")
    if config.alert_ttl_s < 3 * config.repost_s:
        raise ConfigError(
            "--alert-ttl-seconds",
            f"must be at least 3 x --repost-seconds ({3 * config.repost_s:g}), got {config.alert_ttl_s:g}: "
            "an alert would end between two re-posts",
        )
    if config.maintenance and config.alertmanager_url is None:
        raise ConfigError("--config", "maintenance windows become Alertmanager silences: give --alertmanager-url")
    return config


@dataclass
class Tracked:
    """What the notifier knows of one incident: its latest handled record and its fixed labels."""

    record: dict[str, Any]
    label_severity: str  # the severity of the first record seen; the alert's label for life
    partition: Any  # TopicPartition
    fired_at: float | None = None  # monotonic time of this process's first firing post
    resolved_wall: float | None = None  # wall time the resolve was handled (pruned after the replay window)
    alert_until: float = ENDED  # epoch ms its alert fires until: OPEN, a kept-firing resolve's end, or ENDED
    holding: bool = False  # a resolved alert kept firing: re-posted with its fixed end until posted after it


@dataclass
class _Pending:
    """A record waiting behind a held resolve of the same incident."""

    partition: Any
    offset: int
    message: Any
    record: dict[str, Any]
    due: float


class _Stop(Exception):
    """A stop was requested while waiting for a target."""


@dataclass
class Stats:
    delivered: int = 0
    repeats: int = 0
    dead_letters: int = 0
    reposts: int = 0
    rebuilt: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


def say(text: str) -> None:
    print(f"{PREFIX} {text}", flush=True)


class Notifier:
    """The consume -> deliver -> commit loop (see the module docstring)."""

    def __init__(self, config: NotifyConfig, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.wall = wall
        self.am = (
            AlertmanagerTarget("alertmanager", config.alertmanager_url, config.timeout_s)
            if config.alertmanager_url
            else None
        )
        self.webhook = WebhookTarget("webhook", config.webhook_url, config.timeout_s) if config.webhook_url else None
        self.incidents: dict[str, Tracked] = {}
        self.pending: dict[str, deque[_Pending]] = {}
        self.done: dict[Any, int] = {}  # partition -> next offset whose record is not handled yet
        self.committed: dict[Any, int] = {}
        self.stats = Stats()
        self.stopping = False
        self.next_repost = 0.0
        self.repost_failures = 0
        self.next_silences = 0.0
        self.next_hold_end = math.inf  # epoch ms: the earliest end of a resolved alert kept firing
        self.consumer: Any = None
        self.producer: Any = None
        self.assigned: list[Any] = []  # noted by the rebalance callback, rebuilt after the poll

    # -- lifecycle ------------------------------------------------------------------------------
    def connect(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        self.consumer = KafkaConsumer(
            bootstrap_servers=self.config.bootstrap_servers,
            group_id=self.config.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # a long backoff keeps the loop from polling: stay in the group meanwhile
            max_poll_interval_ms=3_600_000,
            session_timeout_ms=10_000,
            # a static member: restarted with the same id it takes its partitions back at once, instead
            # of waiting for the group to expire the dead process (session_timeout_ms) and rebalance
            group_instance_id=self.config.instance_id,
            client_id="anomaly-notify",
        )
        self.producer = KafkaProducer(
            bootstrap_servers=self.config.bootstrap_servers, acks="all", client_id="anomaly-notify-dlq"
        )
        self.consumer.subscribe([self.config.topic], listener=_Listener(self))

    def run(self) -> int:
        """Until SIGTERM/SIGINT (or :attr:`stopping`); returns the exit code."""
        self.connect()
        targets = ", ".join(f"{t.name} {t.url}" for t in (self.am, self.webhook) if t is not None)
        member = f" (static member {self.config.instance_id!r})" if self.config.instance_id else ""
        say(f"consuming topic {self.config.topic!r} as group {self.config.group_id!r}{member}; notifying {targets}")
        try:
            while not self.stopping:
                self.tick()
                self.flush_due()
                batch = self.consumer.poll(timeout_ms=300)
                fresh = self.rebuild()
                for partition in sorted(batch, key=lambda p: p.partition):
                    if partition in fresh:  # read before the seek to the replay window: fetched again
                        continue
                    for message in batch[partition]:
                        self.handle(partition, message)
                self.commit()
        except _Stop:
            pass
        except FencedInstanceIdError:
            self.stopping = True  # nothing more to commit: the partitions are the other notifier's now
            say(f"another notifier joined group {self.config.group_id!r} with instance id {self.config.instance_id!r}: "
                "stopping; give each notifier of a group its own --instance-id")
            return 1
        finally:
            self.close()
        s = self.stats
        say(f"stopped: {s.delivered} transitions delivered, {s.repeats} repeats skipped, {s.dead_letters} dead letters")
        return 0

    def close(self) -> None:
        if self.consumer is not None:
            if not self.stopping:
                self.commit()
            self.consumer.close(autocommit=False)
        if self.producer is not None:
            self.producer.close(timeout=10)

    # -- rebuild on assignment --------------------------------------------------------------------
    def rebuild(self) -> set[Any]:
        """Rebuild the incidents of the partitions assigned since the last poll (the rebalance
        callbacks run on kafka-python's IO thread, where no blocking call is allowed, so they only
        note them); returns the partitions of a new group, which were moved to the replay window."""
        from kafka import KafkaConsumer

        partitions, self.assigned = self.assigned, []
        if not partitions:
            return set()
        since_ms = int((time.time() - self.config.replay_hours * 3600) * 1000)
        reader = KafkaConsumer(
            bootstrap_servers=self.config.bootstrap_servers, group_id=None, enable_auto_commit=False
        )
        moved: set[Any] = set()
        try:
            reader.assign(partitions)
            starts = reader.offsets_for_times({p: since_ms for p in partitions})
            ends = reader.end_offsets(partitions)
            for p in partitions:
                start = starts[p].offset if starts.get(p) is not None else ends[p]
                committed = self.consumer.committed(p)
                if committed is None:  # a new group: from the replay window on, not the whole history
                    self.consumer.seek(p, start)
                    self.done[p] = start
                    moved.add(p)
                    continue
                self.done[p] = self.committed[p] = committed
                if start < committed:
                    self._replay(reader, p, start, committed)
        finally:
            reader.close()
        opened = sum(1 for t in self.incidents.values() if not is_resolved(t.record))
        say(
            f"partitions {sorted(p.partition for p in partitions)} assigned; rebuilt {self.stats.rebuilt} "
            f"transitions from the last {self.config.replay_hours:g} h: {opened} open incidents"
        )
        now = self.clock()
        for tracked in self.incidents.values():  # posted by an earlier run, maybe moments ago: hold their resolve
            if tracked.fired_at is None and not is_resolved(tracked.record):
                tracked.fired_at = now
        self.next_repost = 0.0
        return moved

    def _replay(self, reader: Any, partition: Any, start: int, end: int) -> None:
        reader.seek(partition, start)
        while reader.position(partition) < end:
            for message in reader.poll(timeout_ms=1000).get(partition, []):
                if message.offset >= end:
                    break
                try:
                    record = parse_incident(message.value)
                except InvalidIncident:
                    continue  # dead-lettered when it was first handled
                at = _produced_ms(message, self.wall() * 1000)
                self.apply(partition, record, self._step(record, at, at)[1])
                self.stats.rebuilt += 1

    def on_revoked(self, partitions: list[Any]) -> None:
        """Forget the partitions' incidents (their new owner rebuilds them); what was handled but not
        committed yet is handled again there, which both targets tolerate."""
        gone = set(partitions)
        self.assigned = [p for p in self.assigned if p not in gone]
        self.incidents = {k: v for k, v in self.incidents.items() if v.partition not in gone}
        self.pending = {k: q for k, q in self.pending.items() if q[0].partition not in gone}
        for p in gone:
            self.done.pop(p, None)
            self.committed.pop(p, None)

    # -- records --------------------------------------------------------------------------------
    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.wall(), tz=timezone.utc)

    def _step(self, record: dict[str, Any], now_ms: float, anchor_ms: float) -> tuple[str, float]:
        """What ``record`` is to a receiver and until when the incident's alert fires after it."""
        tracked = self.incidents.get(record["incident_id"])
        keep = None if self.config.keep_firing_s is None else self.config.keep_firing_s * 1000
        return step(tracked.alert_until if tracked is not None else ENDED, record, now_ms, anchor_ms, keep)

    def apply(self, partition: Any, record: dict[str, Any], alert_until: float) -> bool:
        """Make ``record`` the incident's latest; False when it is a repeat of one already handled."""
        tracked = self.incidents.get(record["incident_id"])
        if tracked is None:
            tracked = Tracked(record, record["severity"], partition)
            self.incidents[record["incident_id"]] = tracked
        elif record["seq"] <= tracked.record["seq"]:
            return False
        tracked.record = record
        tracked.resolved_wall = self.wall() if is_resolved(record) else None
        tracked.alert_until = alert_until
        tracked.holding = is_resolved(record) and math.isfinite(alert_until) and alert_until > self.wall() * 1000
        if tracked.holding:
            self.next_hold_end = min(self.next_hold_end, alert_until)
        return True

    def handle(self, partition: Any, message: Any) -> None:
        self.done[partition] = message.offset + 1
        try:
            record = parse_incident(message.value)
        except InvalidIncident as err:
            self.dead_letter(partition, message, "invalid_incident", str(err))
            return
        incident_id = record["incident_id"]
        tracked = self.incidents.get(incident_id)
        if tracked is not None and record["seq"] <= tracked.record["seq"]:
            self.stats.repeats += 1
            return
        queue = self.pending.get(incident_id)
        due = self._hold_until(tracked, record, message)
        if queue or due is not None:
            entry = _Pending(partition, message.offset, message, record, due or 0.0)
            self.pending.setdefault(incident_id, deque()).append(entry)
            if due is not None:
                say(f"{_name(record)}: resolve held {due - self.clock():.0f} s (Alertmanager's group_wait)")
            return
        self.deliver(partition, message, record)

    def _hold_until(self, tracked: Tracked | None, record: dict[str, Any], message: Any) -> float | None:
        if self.am is None or tracked is None or tracked.fired_at is None or not is_resolved(record):
            return None
        due = tracked.fired_at + self.config.resolve_hold_s
        if due <= self.clock():
            return None
        now_ms = self.wall() * 1000
        kept = self._step(record, now_ms, _produced_ms(message, now_ms))[1]  # kept firing past group_wait anyway
        return None if math.isfinite(kept) and (kept - now_ms) / 1000 >= due - self.clock() else due

    def flush_due(self) -> None:
        now = self.clock()
        for incident_id in list(self.pending):
            queue = self.pending[incident_id]
            while queue and queue[0].due <= now:
                entry = queue.popleft()
                if entry.record["seq"] > self.incidents[incident_id].record["seq"]:
                    self.deliver(entry.partition, entry.message, entry.record)
            if not queue:
                del self.pending[incident_id]

    def deliver(self, partition: Any, message: Any, record: dict[str, Any]) -> None:
        """Send one transition to every target (retrying what may pass), then make it the latest."""
        tracked = self.incidents.get(record["incident_id"])
        label = tracked.label_severity if tracked is not None else record["severity"]
        now_ms = self.wall() * 1000
        kind, until = self._step(record, now_ms, _produced_ms(message, now_ms))
        kept = _at(until) if is_resolved(record) and math.isfinite(until) and until > now_ms else None
        sent = []
        if self.am is not None:
            alert = to_alert(record, label, self.config.dashboard_url, self._now(), self.config.alert_ttl_s, kept)
            am = self.am
            try:
                self.retry(f"{_name(record)} to alertmanager", lambda: am.post_alerts([alert]))
                sent.append("alertmanager")
            except TargetRejected as err:
                self.dead_letter(partition, message, "alertmanager_rejected", str(err))
                return  # not applied: the incident keeps the state Alertmanager last accepted
        if self.webhook is not None:
            hook = self.webhook
            try:
                self.retry(f"{_name(record)} to webhook", lambda: hook.post_transition(record, kind))
                sent.append("webhook")
            except TargetRejected as err:
                self.dead_letter(partition, message, "webhook_rejected", str(err))
        self.apply(partition, record, until)
        tracked = self.incidents[record["incident_id"]]
        if self.am is not None and (kind == FIRING or (tracked.fired_at is None and not is_resolved(record))):
            tracked.fired_at = self.clock()  # (again when it fires again: a resolve within group_wait is held)
        self.stats.delivered += 1
        kept_text = f", kept firing until {kept:%H:%M:%S} (it may reopen)" if kept and tracked.holding else ""
        say(
            f"{_name(record)}: {record['transition']} (seq {record['seq']}, {record['state']}, "
            f"severity {record['severity']}) -> {', '.join(sent) or 'dead letter only'}: {kind}{kept_text}"
        )

    def retry(self, what: str, action: Callable[[], T]) -> T:
        """``action()`` until it stops raising TargetUnavailable: 1, 2, 4 ... s apart, at most the cap."""
        delay, attempts = 1.0, 0
        while True:
            try:
                out = action()
            except TargetUnavailable as err:
                attempts += 1
                say(f"{what}: {err}; attempt {attempts} failed, next in {delay:.0f} s")
                self.wait(delay)
                delay = min(delay * 2, self.config.max_backoff_s)
                continue
            if attempts:
                say(f"{what}: delivered after {attempts} failed attempts")
            return out

    def wait(self, seconds: float) -> None:
        """Sleep, still re-posting open incidents when their time comes; raise _Stop on a stop request."""
        end = self.clock() + seconds
        while self.clock() < end:
            if self.stopping:
                raise _Stop
            self.tick(quiet=True)
            time.sleep(min(0.2, max(0.0, end - self.clock())))

    def dead_letter(self, partition: Any, message: Any, reason: str, detail: str) -> None:
        source = json.dumps({"topic": partition.topic, "partition": partition.partition, "offset": message.offset})
        headers = [
            ("anomaly.reason", reason.encode()),
            ("anomaly.detail", detail.encode("utf-8", "replace")),
            ("anomaly.source", source.encode()),
        ]
        future = self.producer.send(self.config.dead_letter_topic, value=message.value, key=message.key,
                                    headers=headers)
        future.get(timeout=60)  # before the offset is committed: raise (and restart) rather than lose it
        self.stats.dead_letters += 1
        self.stats.by_reason[reason] = self.stats.by_reason.get(reason, 0) + 1
        say(f"dead letter ({reason}) to {self.config.dead_letter_topic!r}: offset {message.offset} of "
            f"{partition.topic}[{partition.partition}]: {detail}")

    def commit(self) -> None:
        from kafka.structs import OffsetAndMetadata

        heads: dict[Any, int] = {}
        for queue in self.pending.values():
            for entry in queue:
                heads[entry.partition] = min(heads.get(entry.partition, entry.offset), entry.offset)
        offsets = {}
        for partition, done in self.done.items():
            upto = min(done, heads.get(partition, done))
            if self.committed.get(partition) != upto:
                offsets[partition] = OffsetAndMetadata(upto, "", -1)
        if offsets:
            self.consumer.commit(offsets)
            self.committed.update({p: o.offset for p, o in offsets.items()})

    # -- periodic work --------------------------------------------------------------------------
    def tick(self, quiet: bool = False) -> None:
        """Re-post the open incidents when due; keep the maintenance silences; forget old resolves."""
        now = self.clock()
        if self.am is not None and now >= self.next_repost:
            self.repost(now)
        if self.am is not None and self.wall() * 1000 >= self.next_hold_end:
            self.end_holds()
        if self.am is not None and self.config.maintenance and now >= self.next_silences:
            try:
                for line in sync_silences(self.am, self.config.maintenance, self._now()):
                    say(line)
                self.next_silences = now + self.config.silence_refresh_s
            except (TargetUnavailable, TargetRejected) as err:
                say(f"maintenance silences: {err}; next try in 30 s")
                self.next_silences = now + 30
        horizon = self.wall() - self.config.replay_hours * 3600
        stale = [k for k, t in self.incidents.items() if t.resolved_wall is not None and t.resolved_wall < horizon]
        for key in stale:
            if key not in self.pending:
                del self.incidents[key]

    def end_holds(self) -> None:
        """Post the kept-firing alerts whose end has come with that end: Alertmanager keeps the latest
        ``endsAt`` of a firing alert, so one an earlier re-post gave ``--alert-ttl-seconds`` ahead would
        outlive a shorter hold; a resolved post ends it (and tells an Alertmanager that was down)."""
        assert self.am is not None
        now_ms = self.wall() * 1000
        ended = [t for t in self.incidents.values() if t.holding and t.alert_until <= now_ms]
        alerts = [to_alert(t.record, t.label_severity, self.config.dashboard_url, self._now(),
                           self.config.alert_ttl_s, _at(t.alert_until)) for t in ended]
        try:
            self.am.post_alerts(alerts)
        except TargetUnavailable as err:
            say(f"end of {len(alerts)} kept-firing alerts: {err}; next try in 5 s")
            self.next_hold_end = now_ms + 5000
            return
        except TargetRejected as err:  # not worth retrying; Alertmanager ends them at their endsAt anyway
            say(f"end of {len(alerts)} kept-firing alerts refused: {err}")
        for tracked in ended:
            tracked.holding = False
        self.next_hold_end = min((t.alert_until for t in self.incidents.values() if t.holding), default=math.inf)

    def repost(self, now: float) -> None:
        """Open incidents with endsAt pushed ahead; resolved ones kept firing with their fixed end (never
        pushed: a re-post does not revive them), once more after it (Alertmanager may have been down)."""
        assert self.am is not None
        open_now = [t for t in self.incidents.values() if not is_resolved(t.record)]
        held = [t for t in self.incidents.values() if t.holding]
        moment, now_ms = self._now(), self.wall() * 1000
        alerts = [
            to_alert(t.record, t.label_severity, self.config.dashboard_url, moment, self.config.alert_ttl_s)
            for t in open_now
        ] + [
            to_alert(t.record, t.label_severity, self.config.dashboard_url, moment, self.config.alert_ttl_s,
                     _at(t.alert_until))
            for t in held
        ]
        try:
            self.am.post_alerts(alerts)
        except (TargetUnavailable, TargetRejected) as err:
            self.repost_failures += 1
            delay = min(2.0**self.repost_failures, self.config.max_backoff_s, self.config.repost_s)
            say(f"re-post of {len(alerts)} open incidents failed ({err}); next try in {delay:.0f} s")
            self.next_repost = now + delay
            return
        if self.repost_failures:
            say(f"re-posted {len(alerts)} open incidents after {self.repost_failures} failed attempts")
        self.repost_failures = 0
        self.stats.reposts += 1
        for tracked in held:
            tracked.holding = tracked.alert_until > now_ms
        for tracked in open_now:
            if tracked.fired_at is None:
                tracked.fired_at = now
        self.next_repost = now + self.config.repost_s


class _Listener:
    """kafka-python's rebalance callbacks, forwarded to the notifier."""

    def __new__(cls, notifier: Notifier) -> Any:
        from kafka import ConsumerRebalanceListener

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                notifier.on_revoked(list(revoked))

            def on_partitions_assigned(self, assigned: Any) -> None:
                notifier.assigned.extend(assigned)

        return Listener()


def _name(record: dict[str, Any]) -> str:
    return f"{record['application']}/{record['detector']} incident {record['incident_id'][:8]}"


def _at(ms: float) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def _produced_ms(message: Any, now_ms: float) -> float:
    """When the job produced the record (its Kafka timestamp), never later than now; now without one."""
    ts = getattr(message, "timestamp", None)
    return min(float(ts), now_ms) if isinstance(ts, int) and ts > 0 else now_ms


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomaly-notify",
        description="Hand the job's incidents to Prometheus Alertmanager (v2 API) and/or a JSON webhook.",
    )
    add = parser.add_argument
    add("--bootstrap-servers", help="Kafka bootstrap servers, e.g. 127.0.0.1:9092 (default: the --config's)")
    add("--topic", help="incidents topic (default: the --config's sinks.incidents_topic, else incidents)")
    add("--group", default="anomaly-notify", help="consumer group (default anomaly-notify)")
    add("--instance-id", default="host",
        help="the notifier's static member id in the group: restarted with the same id it resumes at once; "
        "host (default): this host's name; none: a dynamic member (a restart waits out the group's session "
        "timeout, 10 s); each notifier of a group needs its own")
    add("--alertmanager-url", help="Alertmanager base URL, e.g. http://127.0.0.1:9093")
    add("--webhook-url", help="generic JSON webhook: each transition POSTed once with an Idempotency-Key")
    add("--dead-letter-topic", default="incidents-dead-letters", help="where rejected records go")
    add("--dashboard-url", default="http://127.0.0.1:8050", help="base of the alerts' generatorURL")
    add("--repost-seconds", type=float, default=60.0, help="re-post open incidents this often (default 60)")
    add("--alert-ttl-seconds", type=float, default=300.0, help="endsAt of a firing alert ahead of now (300)")
    add("--resolve-hold-seconds", type=float, default=60.0,
        help="hold a resolve this long after the first firing post; > the route's group_wait (60)")
    add("--keep-firing-seconds", default="merge-gap",
        help="keep a cleanly resolved incident's alert firing this long, at most its merge gap (within which a "
        "reopen continues it instead of paging); merge-gap (default): the gap its record carries; 0: end at once")
    add("--replay-hours", type=float, default=168.0,
        help="rebuild open incidents from this far back; > the job's incident max_duration (168)")
    add("--timeout-seconds", type=float, default=10.0, help="HTTP timeout per request (default 10)")
    add("--max-backoff-seconds", type=float, default=60.0, help="retry backoff cap (default 60)")
    add("--silence-refresh-seconds", type=float, default=300.0, help="check maintenance silences this often")
    add("--config", help="the job's YAML config: its maintenance windows become silences; it gives the "
        "incidents topic and bootstrap servers unless --topic/--bootstrap-servers do")
    return parser


def _from_job(job: JobConfig | None, args: argparse.Namespace) -> tuple[str, str]:
    """Bootstrap servers and topic: the options, else what the job's config says (one value for all streams)."""
    servers, topic = args.bootstrap_servers, args.topic
    if job is not None:
        topics = sorted({s.sinks.incidents_topic for s in job.streams if s.sinks.incidents_topic})
        if topic is None and len(topics) > 1:
            raise ConfigError("--topic", f"the config's streams write incidents to {topics}: choose one")
        topic = topic or (topics[0] if topics else None)
        clusters = sorted({s.output_bootstrap_servers for s in job.streams})
        if servers is None and len(clusters) > 1:
            raise ConfigError("--bootstrap-servers", f"the config's streams write to {clusters}: choose one")
        servers = servers or clusters[0]
    if not servers:
        raise ConfigError("--bootstrap-servers", "is required (or --config with the job's config)")
    return servers, topic or "incidents"


def _keep_firing(text: str) -> float | None:
    if text.strip().lower() in ("merge-gap", "merge_gap"):
        return None
    try:
        return float(text)
    except ValueError:
        message = f"must be merge-gap or a number of seconds >= 0, got {text!r}"
        raise ConfigError("--keep-firing-seconds", message) from None


def _instance_id(text: str) -> str | None:
    value = text.strip()
    if value.lower() == "none":
        return None
    if value.lower() == "host":
        return f"anomaly-notify-{socket.gethostname()}"
    if not value:
        raise ConfigError("--instance-id", "must not be empty (none: a dynamic member)")
    return value


def config_from_args(args: argparse.Namespace) -> NotifyConfig:
    job = load_config(args.config) if args.config else None
    servers, topic = _from_job(job, args)
    return validate(
        NotifyConfig(
            bootstrap_servers=servers,
            topic=topic,
            group_id=args.group,
            instance_id=_instance_id(args.instance_id),
            alertmanager_url=args.alertmanager_url,
            webhook_url=args.webhook_url,
            dead_letter_topic=args.dead_letter_topic,
            dashboard_url=args.dashboard_url,
            repost_s=args.repost_seconds,
            alert_ttl_s=args.alert_ttl_seconds,
            resolve_hold_s=args.resolve_hold_seconds,
            keep_firing_s=_keep_firing(args.keep_firing_seconds),
            replay_hours=args.replay_hours,
            timeout_s=args.timeout_seconds,
            max_backoff_s=args.max_backoff_seconds,
            silence_refresh_s=args.silence_refresh_seconds,
            maintenance=windows_of(job) if job is not None else (),
        )
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except (ConfigError, OSError) as err:  # the job's config errors name their field too
        where = f" ({args.config})" if args.config and not str(err).startswith("--") else ""
        print(f"anomaly-notify{where}: {err}", file=sys.stderr)
        return 2
    notifier = Notifier(config)

    def stop(signum: int, frame: Any) -> None:
        notifier.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return notifier.run()


if __name__ == "__main__":
    sys.exit(main())
