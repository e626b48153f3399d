"""Deterministic demo metric stream with known anomalies, and small Kafka produce/consume helpers.

``generate()`` builds, for a few applications, one value per ``step_s`` seconds: a per-application
base level, a daily sine seasonality, Gaussian noise, and injected anomalies at known timestamps:

* ``spike``       -- the value jumps up by ~60 % of the base level for ``anomaly_duration_s``;
* ``dip``         -- the value drops by ~50 % of the base level for ``anomaly_duration_s``;
* ``level_shift`` -- the value moves up by ~40 % of the base level and stays there.

Anomalies start on ``align_s`` (5 min) boundaries and last 10 minutes, so they cover whole tumbling
windows of 5 minutes: after averaging, a spike is still ~60x the window noise (noise sigma is 2 % of
the base per point, ~0.9 % after a 5-point average) and far beyond the seasonal drift inside one
window. No anomaly falls in the first ``warmup_points`` points of an application, and two anomalies of
one application are at least ``min_gap_s`` apart, so detectors have history before each of them.

>>> stream = generate(points_per_app=600, seed=1)
>>> len(stream.messages), len(stream.anomalies) > 0
(2400, True)
>>> sorted(stream.messages[0]), stream.messages[0]["ts"]
(['application', 'ts', 'value'], '2024-01-01T00:00:00Z')

Determinism: the same arguments give the same stream with a given NumPy version (NumPy does not
promise identical ``Generator`` streams across major versions).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

import numpy as np

# Chosen so that Kafka's murmur2 key partitioner spreads them evenly over 2, 3 and 4 partitions
# (e.g. "checkout", "payments", "search", "inventory" all land on partition 0 of 2).
DEFAULT_APPLICATIONS: tuple[str, ...] = ("checkout", "payments", "auth", "shipping")
DEFAULT_START = datetime(2024, 1, 1, tzinfo=timezone.utc)
DAY_S = 86_400.0

SPIKE, DIP, LEVEL_SHIFT = "spike", "dip", "level_shift"
# Anomaly size, as a fraction of the application's base level.
MAGNITUDE = {SPIKE: 0.6, DIP: -0.5, LEVEL_SHIFT: 0.4}
NOISE_FRACTION = 0.02
SEASONAL_FRACTION = 0.15


class InjectedAnomaly(NamedTuple):
    application: str
    ts: str  # ISO-8601 UTC of the first affected point, e.g. "2024-01-01T05:35:00Z"
    kind: str  # "spike" | "dip" | "level_shift"
    end_ts: str | None  # first point no longer affected; None for a level shift (lasts to the end)
    delta: float  # value added to every affected point


class SyntheticStream(NamedTuple):
    messages: list[dict[str, Any]]  # {"application", "value", "ts"}, in time order
    anomalies: list[InjectedAnomaly]  # in time order


def iso_z(dt: datetime) -> str:
    """ISO-8601 in UTC with a ``Z`` suffix; milliseconds only when the time has a fraction."""
    dt = dt.astimezone(timezone.utc)
    spec = "milliseconds" if dt.microsecond else "seconds"
    return dt.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def parse_iso_z(ts: str) -> datetime:
    """Inverse of :func:`iso_z` (also accepts ``+00:00`` offsets)."""
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _as_utc(start: datetime | str) -> datetime:
    if isinstance(start, str):
        start = parse_iso_z(start)
    return start.replace(tzinfo=timezone.utc) if start.tzinfo is None else start.astimezone(timezone.utc)


def generate(
    *,
    start: datetime | str = DEFAULT_START,
    points_per_app: int = 1440,
    step_s: float = 60.0,
    seed: int = 42,
    applications: Sequence[str] = DEFAULT_APPLICATIONS,
    warmup_points: int = 120,
    anomaly_duration_s: float = 600.0,
    min_gap_s: float = 3600.0,
    align_s: float = 300.0,
    inject: bool = True,
) -> SyntheticStream:
    """Generate the demo stream; the same arguments always give the same result.

    Each application gets a spike and a dip; the last application gets a level shift instead of a dip
    (so all three kinds appear with the default four applications). When ``points_per_app`` leaves no
    room for two well-separated anomalies after the warm-up, an application gets one (or none: use
    ``inject=False`` for clean data).
    """
    if points_per_app <= 0 or step_s <= 0:
        raise ValueError("points_per_app and step_s must be positive")
    if len(set(applications)) != len(applications) or not applications:
        raise ValueError("applications must be non-empty and unique")
    t0 = _as_utc(start)
    rng = np.random.default_rng(seed)
    n = points_per_app
    t_s = np.arange(n, dtype=float) * step_s  # seconds since start
    epoch0 = t0.timestamp()
    dur_pts = max(1, math.ceil(anomaly_duration_s / step_s))
    gap_pts = max(dur_pts + 1, math.ceil(min_gap_s / step_s))

    series: dict[str, np.ndarray] = {}
    anomalies: list[InjectedAnomaly] = []
    for i, app in enumerate(applications):
        base = float(rng.choice([50.0, 100.0, 200.0, 400.0, 800.0]) * (0.8 + 0.4 * rng.random()))
        phase = rng.uniform(0.0, 2.0 * math.pi)
        seasonal = SEASONAL_FRACTION * base * np.sin(2.0 * math.pi * (epoch0 + t_s) / DAY_S + phase)
        values = base + seasonal + rng.normal(0.0, NOISE_FRACTION * base, n)

        if inject:
            kinds = [SPIKE, LEVEL_SHIFT] if i == len(applications) - 1 else [SPIKE, DIP]
            starts = _pick_starts(rng, n, step_s, epoch0, len(kinds), warmup_points, dur_pts, gap_pts, align_s)
            # A level shift lasts until the end, so it must come after the other anomalies of the app.
            for kind, idx in zip(kinds[: len(starts)], sorted(starts), strict=False):
                delta = round(MAGNITUDE[kind] * base, 3)
                end = n if kind == LEVEL_SHIFT else min(n, idx + dur_pts)
                values[idx:end] += delta
                anomalies.append(
                    InjectedAnomaly(
                        application=app,
                        ts=iso_z(t0 + timedelta(seconds=float(t_s[idx]))),
                        kind=kind,
                        end_ts=None if kind == LEVEL_SHIFT else iso_z(t0 + timedelta(seconds=end * step_s)),
                        delta=delta,
                    )
                )
        series[app] = np.maximum(values, 0.0)

    timestamps = [iso_z(t0 + timedelta(seconds=float(s))) for s in t_s]
    messages = [
        {"application": app, "value": round(float(series[app][k]), 3), "ts": timestamps[k]}
        for k in range(n)
        for app in applications
    ]
    anomalies.sort(key=lambda a: (parse_iso_z(a.ts), a.application))
    return SyntheticStream(messages, anomalies)


def _pick_starts(
    rng: np.random.Generator,
    n: int,
    step_s: float,
    epoch0: float,
    count: int,
    warmup_points: int,
    dur_pts: int,
    gap_pts: int,
    align_s: float,
) -> list[int]:
    """Indices of ``count`` (or fewer, if they do not fit) anomaly starts: after the warm-up, on
    ``align_s`` boundaries, ``gap_pts`` apart, and leaving ``gap_pts`` after the last one."""
    candidates = [
        k
        for k in range(warmup_points, n - gap_pts)
        if align_s <= 0 or abs(math.remainder(epoch0 + k * step_s, align_s)) < 1e-6
    ]
    chosen: list[int] = []
    for k in rng.permutation(candidates).tolist():
        if len(chosen) == count:
            break
        if all(abs(k - c) >= gap_pts for c in chosen):
            chosen.append(int(k))
    return sorted(chosen)


# --------------------------------------------------------------------------- Kafka helpers


class ConsumedRecord(NamedTuple):
    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    headers: tuple[tuple[str, bytes], ...] = ()

    def header(self, name: str) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


def encode_message(message: dict[str, Any] | bytes | str) -> bytes:
    """JSON-encode a dict; pass bytes through untouched (for bad-message tests); UTF-8 encode a str."""
    if isinstance(message, bytes | bytearray):
        return bytes(message)
    if isinstance(message, str):
        return message.encode("utf-8")
    return json.dumps(message, separators=(",", ":")).encode("utf-8")


def produce_messages(
    bootstrap_servers: str,
    topic: str,
    messages: Iterable[dict[str, Any] | bytes | str],
    key_field: str | None = "application",
    *,
    timeout_s: float = 60.0,
) -> int:
    """Send ``messages`` to ``topic`` (acks=all, in order per key) and return how many were sent.

    A dict is JSON-encoded and keyed by ``str(message[key_field])`` when that field exists; bytes and
    str are sent as they are, without a key. Raises if any send fails.
    """
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks="all",
        linger_ms=20,
        retries=5,
        max_in_flight_requests_per_connection=1,  # keep order on retry
        request_timeout_ms=int(timeout_s * 1000),
        client_id="synthetic-producer",
    )
    futures = []
    try:
        for message in messages:
            key = None
            if isinstance(message, dict) and key_field and message.get(key_field) is not None:
                key = str(message[key_field]).encode("utf-8")
            futures.append(producer.send(topic, value=encode_message(message), key=key))
        producer.flush(timeout=timeout_s)
        for future in futures:
            future.get(timeout=timeout_s)  # raises the send error, if any
    finally:
        producer.close(timeout=10)
    return len(futures)


def consume_all(
    bootstrap_servers: str,
    topic: str,
    timeout_s: float = 30.0,
    *,
    idle_s: float = 1.5,
) -> list[ConsumedRecord]:
    """Read ``topic`` from the beginning until no new record arrived for ``idle_s`` seconds, every
    partition has been read up to its end offset at the time of the call, or ``timeout_s`` passed.

    No consumer group is used (nothing is committed). Records are returned sorted by (partition,
    offset). A topic that does not appear within ``timeout_s`` gives an empty list.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="synthetic-consumer",
    )
    deadline = time.monotonic() + timeout_s
    records: list[ConsumedRecord] = []
    try:
        partitions = None
        while partitions is None and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                time.sleep(0.2)
        if not partitions:
            return []
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end_offsets = consumer.end_offsets(tps)
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200)
            got = False
            for recs in batch.values():
                for r in recs:
                    records.append(ConsumedRecord(r.key, r.value, r.partition, r.offset, tuple(r.headers or ())))
                    got = True
            now = time.monotonic()
            if got:
                last_new = now
            elif now - last_new >= idle_s and (
                now - last_new >= 3 * idle_s  # e.g. end offsets past trailing transaction markers
                or all(consumer.position(tp) >= end_offsets[tp] for tp in tps)
            ):
                break
    finally:
        consumer.close()
    records.sort(key=lambda r: (r.partition, r.offset))
    return records
