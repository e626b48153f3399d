"""Operator feedback on an incident: ``python -m tools.feedback`` (or ``anomaly-feedback``).

    python -m tools.feedback --bootstrap-servers 127.0.0.1:9092 --topic incident-feedback \\
        --application checkout --incident 3f2a... --label false_positive [--by alice --comment "deploy"]

produces one record on the job's feedback topic (``sources.feedback_topic``, default
``incident-feedback``), key = application, so the job reads an application's feedback in order:
``{"application", "incident_id", "label", "ts", "by", "comment"}``. The job acts on it:
``false_positive``/``expected`` resolve the incident and stop its notifications, ``new_normal``
resolves it and makes the application's detectors re-learn from now, ``true_positive`` is
recorded. Feedback for an unknown application or incident goes to the job's dead-letter topic
(``unknown_incident``). The dashboard's buttons produce the same record (:func:`send_feedback`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime, timezone
from typing import Any

from jobs.config import ConfigError
from tools.notify_targets import iso_z

LABELS = ("false_positive", "expected", "true_positive", "new_normal")
DEFAULT_TOPIC = "incident-feedback"
_ID_RE = re.compile(r"^[0-9a-f]{32}$")
MAX_TEXT = 2000


def feedback_record(
    application: str,
    incident_id: str,
    label: str,
    by: str | None = None,
    comment: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The feedback record of the contract, validated; errors name the field."""
    if not isinstance(application, str) or not application.strip() or len(application) > 512:
        raise ConfigError("application", "must be a non-empty name of at most 512 characters")
    if not isinstance(incident_id, str) or not _ID_RE.match(incident_id):
        raise ConfigError("incident", f"must be the incident's id, 32 lowercase hex characters; got {incident_id!r}")
    if label not in LABELS:
        raise ConfigError("label", f"must be one of {', '.join(LABELS)}; got {label!r}")
    for name, text in (("by", by), ("comment", comment)):
        if text is not None and (not isinstance(text, str) or len(text) > MAX_TEXT):
            raise ConfigError(name, f"must be text of at most {MAX_TEXT} characters")
    return {
        "application": application,
        "incident_id": incident_id,
        "label": label,
        "ts": iso_z(now or datetime.now(timezone.utc)),
        "by": by or None,
        "comment": comment or None,
    }


def send_feedback(bootstrap_servers: str, topic: str, record: dict[str, Any], timeout_s: float = 30.0) -> Any:
    """Produce ``record`` (key = application, acks=all) and wait for the broker; returns its metadata."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks="all",
        client_id="anomaly-feedback",
        request_timeout_ms=int(timeout_s * 1000),
        max_block_ms=int(timeout_s * 1000),
    )
    try:
        future = producer.send(
            topic,
            key=record["application"].encode("utf-8"),
            value=json.dumps(record, separators=(",", ":")).encode("utf-8"),
        )
        return future.get(timeout=timeout_s)
    finally:
        producer.close(timeout=10)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomaly-feedback", description="Tell the job what an incident was (one record on its feedback topic)."
    )
    parser.add_argument("--bootstrap-servers", required=True, help="Kafka bootstrap servers")
    parser.add_argument("--topic", default=DEFAULT_TOPIC, help=f"the job's feedback topic (default {DEFAULT_TOPIC})")
    parser.add_argument("--application", required=True, help="the incident's application")
    parser.add_argument("--incident", required=True, help="the incident's id (32 hex characters)")
    parser.add_argument("--label", required=True, help=f"one of {', '.join(LABELS)}")
    parser.add_argument("--by", help="who says so")
    parser.add_argument("--comment", help="why")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        record = feedback_record(args.application, args.incident, args.label, args.by, args.comment)
    except ConfigError as err:
        print(f"anomaly-feedback: --{err}", file=sys.stderr)
        return 2
    try:
        meta = send_feedback(args.bootstrap_servers, args.topic, record)
    except Exception as err:  # the broker unreachable or refusing: say so, no stack trace
        print(f"anomaly-feedback: could not produce to {args.topic!r} at {args.bootstrap_servers}: {err}",
              file=sys.stderr)
        return 1
    print(
        f"feedback {record['label']} on incident {record['incident_id']} of {record['application']!r} sent to "
        f"{args.topic!r} (partition {meta.partition}, offset {meta.offset})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
