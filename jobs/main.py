"""Entry point: ``python -m jobs.main --config conf/demo.yaml`` (or via spark-submit.sh).

One streaming query per configured stream, assembled in jobs/query.py.

The config is validated before Spark starts. Each stream checkpoints under
``checkpoint_dir/<stream name>``; restarting with the same config resumes from
there. A change that would silently corrupt state (aggregation, a detector's
parameters) is refused with a message saying what to do.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from jobs.config import ConfigError, JobConfig, StreamConfig, load_config

log = logging.getLogger("anomaly.job")
FINGERPRINT_FILE = "anomaly-job-config.json"
# How the operator lays out its state; a checkpoint written with another layout
# cannot be read (before "buckets-1" the state was kept per application; "buckets-1"
# kept one blob per application inside each bucket's value, "buckets-2" is columnar).
STATE_LAYOUT = "buckets-2"
_OLD_LAYOUTS = {
    None: "kept its state per application",
    "buckets-1": "kept its state per bucket of applications, one blob per application",
}


class CheckpointMismatch(RuntimeError):
    pass


def _stream_fingerprint(stream: StreamConfig) -> dict[str, Any]:
    return {
        "state_layout": STATE_LAYOUT,
        "buckets": stream.buckets,
        "agg_function": stream.aggregation.agg_function,
        "agg_window_millis": stream.aggregation.agg_window_millis,
        "detectors": {d.label: {"name": d.name, "params": dict(d.params)} for d in stream.detectors},
    }


def check_checkpoint(stream: StreamConfig, checkpoint: str) -> None:
    """Refuse a restart whose config would misread the state in ``checkpoint``.

    Adding a detector (a new label) is safe: it starts fresh. Changing the
    aggregation or an existing detector's name or parameters is not.
    """
    if "://" in checkpoint and not checkpoint.startswith("file:"):
        return  # remote checkpoints (HDFS, S3...) are not checked here
    path = Path(checkpoint.removeprefix("file:")) / FINGERPRINT_FILE
    current = json.loads(json.dumps(_stream_fingerprint(stream), default=str))
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("state_layout") != STATE_LAYOUT:
            raise CheckpointMismatch(
                f"stream {stream.name!r}: the checkpoint at {path.parent} was written by an older version of "
                f"the job that {_OLD_LAYOUTS.get(stored.get('state_layout'), 'laid out its state differently')} "
                f"(layout {stored.get('state_layout', 'per-application')!r}; this version keeps it per bucket of "
                f"applications in columns, layout {STATE_LAYOUT!r}). Start this stream "
                "from a new checkpoint (change checkpoint_dir or the stream name); its state then starts empty."
            )
        problems = []
        for key in ("buckets", "agg_function", "agg_window_millis"):
            if stored[key] != current[key]:
                problems.append(f"{key} was {stored[key]!r}, config says {current[key]!r}")
        for label, spec in stored["detectors"].items():
            if label in current["detectors"] and current["detectors"][label] != spec:
                problems.append(f"detector {label!r} was {spec}, config says {current['detectors'][label]}")
        if problems:
            raise CheckpointMismatch(
                f"stream {stream.name!r}: the checkpoint at {path.parent} holds state built with another "
                f"config ({'; '.join(problems)}). Revert the change, or start this stream from a new "
                "checkpoint (change checkpoint_dir or the stream name); its state then starts empty."
            )
        merged = {**stored, "detectors": {**stored["detectors"], **current["detectors"]}}
    else:
        merged = current
    path.parent.mkdir(parents=True, exist_ok=True)
    # write-then-rename: a kill mid-write must not leave a truncated file behind
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(merged, indent=2, sort_keys=True))
    os.replace(tmp, path)


def checkpoint_of(job: JobConfig, stream: StreamConfig) -> str:
    return f"{job.checkpoint_dir.rstrip('/')}/{stream.name}"


def run(job: JobConfig, spark: Any = None, stop_event: threading.Event | None = None) -> int:
    """Start every stream and wait; returns a process exit code."""
    from jobs.progress import ProgressListener
    from jobs.query import start_stream
    from jobs.session import build_session
    from jobs.source import FeedbackTopicError
    from jobs.workdir import claim

    # Every stream's checkpoint before Spark starts: a refusal takes a moment, not
    # a JVM start, and no stream runs while another one is refused.
    for stream in job.streams:
        check_checkpoint(stream, checkpoint_of(job, stream))
    spark = spark or build_session(conf=job.spark_conf, temp_dir=claim(job.temp_dir))
    listener = ProgressListener()
    spark.streams.addListener(listener)
    queries = []
    try:
        for stream in job.streams:
            try:
                queries.append(start_stream(spark, job, stream, checkpoint_of(job, stream)))
            except FeedbackTopicError as err:  # the first call to the broker: a refused login shows here
                log.error("[%s] failed: %s", stream.name, security_failure(stream, err.detail) or str(err))
                return 1
        stop_event = stop_event or threading.Event()
        while not stop_event.is_set():
            active = [q for q in queries if q.isActive]
            failed = [q for q in queries if not q.isActive and q.exception() is not None]
            if failed:
                by_name = {s.name: s for s in job.streams}
                for q in failed:
                    log.error("[%s] failed: %s", q.name, failure_message(by_name.get(q.name), str(q.exception())))
                return 1
            if not active:
                return 0
            stop_event.wait(0.5)
        return 0
    finally:
        for q in queries:
            if q.isActive:
                q.stop()
        # the listener must see every query's last events before it goes (see wait_terminated)
        listener.wait_terminated([str(q.id) for q in queries])
        spark.streams.removeListener(listener)


_AUTH_ERRORS = ("SaslAuthenticationException", "Authentication failed", "AuthenticationException")
_TLS_ERRORS = ("SSLHandshakeException", "SslAuthenticationException")


def failure_message(stream: StreamConfig | None, error: str) -> str:
    """One line for a failed query; a refused login names the listener, protocol, mechanism and user."""
    first = error.splitlines()[0] if error else "unknown error"
    return security_failure(stream, error) or first


def security_failure(stream: StreamConfig | None, error: str) -> str | None:
    """The line for a refused login or TLS handshake, or None when ``error`` is neither."""
    if stream is None or stream.source.security is None:
        return None
    auth = any(marker in error for marker in _AUTH_ERRORS)
    if not auth and not any(marker in error for marker in _TLS_ERRORS):
        return None
    # the line that names the cause (py4j puts "An error occurred while calling ..." first)
    lines = [line.strip(" :") for line in error.splitlines() if line.strip(" :")]
    first = next(line for line in lines if any(m in line for m in (*_AUTH_ERRORS, *_TLS_ERRORS)))
    security = stream.source.security
    where = f"{stream.source.bootstrap_servers} ({security.describe()})"
    if auth:
        who = f"user {security.username()!r}, password from ${security.password_env}" if security.username_env else ""
        return f"Kafka authentication failed at listener {where}, {who or 'client certificate'}: {first}"
    return f"TLS handshake with listener {where} failed (check source.security.truststore): {first}"


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kafka-python and py4j narrate every connection at INFO
    for noisy in ("kafka", "py4j"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="anomaly-job",
        description="Streaming anomaly detection: Kafka -> windowed aggregation -> detectors -> Kafka + JDBC.",
        epilog="Submit to a cluster with ./spark-submit.sh; see README.md.",
    )
    parser.add_argument("--config", required=True, help="YAML job config (see conf/demo.yaml)")
    parser.add_argument("--available-now", action="store_true", help="consume what is in Kafka now, then exit")
    parser.add_argument("--checkpoint-dir", help="override checkpoint_dir from the config")
    parser.add_argument("--validate", action="store_true", help="validate the config and exit")
    parser.add_argument("--print-temp-dir", action="store_true", help=argparse.SUPPRESS)  # for spark-submit.sh
    args = parser.parse_args(argv)
    configure_logging()
    try:
        job = load_config(args.config)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.available_now or args.checkpoint_dir:
        from dataclasses import replace

        job = replace(
            job,
            trigger="available_now" if args.available_now else job.trigger,
            checkpoint_dir=args.checkpoint_dir or job.checkpoint_dir,
        )
    if args.print_temp_dir:  # spark-submit.sh: the driver JVM's java.io.tmpdir, set before it starts
        from jobs.workdir import temp_paths

        print(temp_paths(job.temp_dir)["jvm"])
        return 0
    if args.validate:
        print(f"config OK: {len(job.streams)} stream(s): {', '.join(s.name for s in job.streams)}")
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        return run(job, stop_event=stop)
    except CheckpointMismatch as err:
        print(f"refusing to start: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
