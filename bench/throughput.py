"""End-to-end throughput of the streaming job against the local Kafka broker.

    .venv/bin/python bench/throughput.py [--events 2000000] [--apps 1000] [--partitions 4]

Produces N synthetic events (JSON, ``apps`` applications, one event per
application every 500 ms of event time) into a fresh topic with Spark's batch
Kafka writer, then runs the job twice with ``--available-now`` semantics:

* ``avg``  over 10 s windows, EMA + Robust detectors;
* ``none`` (every event is a point), EMA detector.

and prints one table row per run: events/s consumed (input rows over the sum of
batch durations), points/s scored, p50/p99 micro-batch duration, and the bytes
of Spark state per application key (read back from the checkpoint with Spark's
state data source). Not run in CI; the README records a run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQueryListener

from jobs.config import parse_config
from jobs.local_kafka import LocalKafkaBroker
from jobs.main import run
from jobs.session import build_session
from jobs.sinks import BOARD

T0_MS = 1_704_067_200_000
STEP_MS = 500


class Collector(StreamingQueryListener):
    def __init__(self) -> None:
        self.batches: list[dict] = []

    def onQueryStarted(self, event) -> None:
        pass

    def onQueryProgress(self, event) -> None:
        p = event.progress
        self.batches.append({"rows": p.numInputRows, "ms": p.durationMs.get("triggerExecution", 0), "batch": p.batchId})

    def onQueryIdle(self, event) -> None:
        pass

    def onQueryTerminated(self, event) -> None:
        pass


def produce(spark, bootstrap: str, topic: str, events: int, apps: int) -> float:
    started = time.monotonic()
    app = F.concat(F.lit("app-"), F.lpad((F.col("id") % apps).cast("string"), 4, "0"))
    ts_ms = F.lit(T0_MS) + F.floor(F.col("id") / apps) * STEP_MS
    value = F.round(100 + 10 * F.sin(F.col("id") / 997.0) + F.rand(7) * 5, 3)
    payload = F.to_json(
        F.struct(
            app.alias("application"),
            value.alias("value"),
            F.date_format(F.timestamp_millis(ts_ms), "yyyy-MM-dd'T'HH:mm:ss.SSS'Z'").alias("ts"),
        )
    )
    (
        # One writer, in id (= event-time) order: several writers would interleave
        # their time ranges in every Kafka partition, and the watermark raised by the
        # newest range would make the older ones late (half the events, measured).
        spark.range(events, numPartitions=1)
        .select(app.cast("binary").alias("key"), payload.cast("binary").alias("value"))
        .write.format("kafka")
        .option("kafka.bootstrap.servers", bootstrap)
        .option("topic", topic)
        .option("kafka.linger.ms", "50")
        .option("kafka.batch.size", "524288")
        .save()
    )
    return time.monotonic() - started


def state_bytes_per_key(spark, checkpoint: str) -> float:
    try:
        state = spark.read.format("statestore").option("path", checkpoint).option("stateVarName", "key_state").load()
        row = state.select(F.avg(F.length(F.col("value.blob"))).alias("b")).first()
        return float(row["b"] or 0.0)
    except Exception as err:
        logging.warning("could not read state back: %s", str(err).splitlines()[0])
        return float("nan")


def run_case(spark, bootstrap, topic, work, name, aggregation, detectors, max_offsets) -> dict:
    checkpoint_root = str(work / f"ck-{name}")
    config = parse_config(
        {
            "checkpoint_dir": checkpoint_root,
            "trigger": "available_now",
            "streams": [
                {
                    "name": name,
                    "source": {
                        "bootstrap_servers": bootstrap,
                        "topics": [topic],
                        "max_offsets_per_trigger": max_offsets,
                    },
                    "aggregation": aggregation,
                    "detectors": detectors,
                    "sinks": {"output_topic": f"{name}-out", "dead_letter_topic": f"{name}-dlq"},
                }
            ],
        }
    )
    collector = Collector()
    spark.streams.addListener(collector)
    results = 0
    original_put = BOARD.put

    def counting_put(stream, batch_id, stats):
        nonlocal results
        results += stats.results
        original_put(stream, batch_id, stats)

    BOARD.put = counting_put  # type: ignore[method-assign]
    started = time.monotonic()
    try:
        assert run(config, spark=spark) == 0
    finally:
        BOARD.put = original_put  # type: ignore[method-assign]
        spark.streams.removeListener(collector)
    wall = time.monotonic() - started
    time.sleep(1)  # the last progress event is delivered asynchronously
    durations = np.array([b["ms"] for b in collector.batches if b["rows"] > 0], dtype=float) / 1000
    busy = sum(b["ms"] for b in collector.batches) / 1000
    rows = sum(b["rows"] for b in collector.batches)
    return {
        "case": name,
        "events": rows,
        "batches": len(durations),
        "events_s": rows / busy if busy else float("nan"),
        "points_s": results / busy if busy else float("nan"),
        "results": results,
        "p50": float(np.percentile(durations, 50)) if len(durations) else float("nan"),
        "p99": float(np.percentile(durations, 99)) if len(durations) else float("nan"),
        "wall": wall,
        "state_b": state_bytes_per_key(spark, f"{checkpoint_root}/{name}"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--apps", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--max-offsets", type=int, default=500_000, help="maxOffsetsPerTrigger")
    parser.add_argument("--cases", default="avg,none", help="comma list of avg,none")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="anomaly-bench-"))
    spark = build_session(
        "anomaly-bench",
        conf={"spark.sql.shuffle.partitions": str(args.partitions), "spark.ui.enabled": "false"},
    )
    rows = []
    with LocalKafkaBroker(work / "kafka", num_partitions=args.partitions, heap="1g") as broker:
        broker.create_topic("bench-in", partitions=args.partitions)
        produce_s = produce(spark, broker.bootstrap_servers, "bench-in", args.events, args.apps)
        print(f"produced {args.events:,} events for {args.apps:,} applications in {produce_s:.1f} s", flush=True)
        cases = {
            "avg": (
                {"agg_function": "avg", "agg_window_millis": 10_000, "allowed_lateness_millis": 2_000},
                [{"name": "ema"}, {"name": "robust"}],
            ),
            "none": ({"agg_function": "none"}, [{"name": "ema"}]),
        }
        for case in args.cases.split(","):
            aggregation, detectors = cases[case]
            rows.append(
                run_case(
                    spark,
                    broker.bootstrap_servers,
                    "bench-in",
                    work,
                    f"bench-{case}",
                    aggregation,
                    detectors,
                    args.max_offsets,
                )
            )
    spark.stop()
    print()
    print(f"machine: {os.cpu_count()} cores; broker on the same machine; {args.partitions} partitions")
    header = (
        f"| {'case':<12} | {'events':>9} | {'batches':>7} | {'events/s':>9} | {'points/s':>9} "
        f"| {'p50 batch s':>11} | {'p99 batch s':>11} | {'state B/key':>11} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        print(
            f"| {r['case']:<12} | {r['events']:>9,} | {r['batches']:>7} | {r['events_s']:>9,.0f} "
            f"| {r['points_s']:>9,.0f} | {r['p50']:>11.2f} | {r['p99']:>11.2f} | {r['state_b']:>11,.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
