"""What the result topic's compression costs the job's Kafka write, against no compression, in one run.

    .venv/bin/python bench/kafka_compression.py                 # 1M results, none/gzip/lz4/zstd, 3 rounds
    .venv/bin/python bench/kafka_compression.py --records 300000 --codecs none,lz4

The job's Kafka sink writes one record per point and detector (jobs/sinks.py
``kafka_records``). On a machine where the broker shares the cores with Spark
(the tests, the demo, a small node) that write is the largest stage after
reading the input (``bench/stage_costs.py``). Compression trades producer
CPU for broker work and bytes. This bench measures that trade on the job's own
record shape, so an operator can choose ``sinks.kafka_options:
{kafka.compression.type: ...}`` from figures, not folklore.

One local broker (tools/local_kafka.py) and one local-mode SparkSession. A
cached batch of ``--records`` result rows (``--apps`` applications, the
operator's output columns, one in 50 an anomaly with its explanation) goes
through ``kafka_records`` and Spark's Kafka writer with the job's producer
defaults (jobs/config.py ``PRODUCER_DEFAULTS``) plus ``compression.type``, into
a topic of its own per codec and round. Codecs run in turn, round after round;
the first round also warms the JVM and is not in the table. Each round also
builds the same records into Spark's ``noop`` sink: what the projection
(``to_json`` of key and value) costs before any producer or broker.

Per codec: wall µs per record (median over the rounds after the first), the
broker's CPU seconds per million records (its process, from /proc), bytes on
the broker's disk per record, and each figure's ratio to ``none`` measured in
the same run. The last column says what a kafka-python consumer needs to read
the topic. Not run in CI.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import bench_session

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
# the records built by the same projection but written to Spark's noop sink: what building them costs
PROJECTION = "noop"
# what kafka-python needs to decompress each codec (its optional dependencies)
KAFKA_PYTHON_NEEDS = {"none": "-", "gzip": "-", "snappy": "python-snappy", "lz4": "lz4", "zstd": "zstandard"}
T0_MS = 1_700_000_000_000


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (the broker is one JVM)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def topic_bytes(data_dir: Path, topic: str) -> int:
    """Bytes of the topic's log segments on the broker's disk (all partitions)."""
    return sum(f.stat().st_size for d in data_dir.glob(f"{topic}-*") if d.is_dir() for f in d.glob("*.log"))


def results_batch(spark: Any, records: int, apps: int) -> Any:
    """``records`` operator result rows in the job's output shape (jobs/result_format.OPERATOR_COLUMNS)."""
    from pyspark.sql import functions as F

    from jobs.result_format import KIND_RESULT, OPERATOR_COLUMNS, OPERATOR_TYPES

    value = F.round(100 + 10 * F.sin(F.col("id") / 997.0) + F.rand(7) * 5, 3)
    anomaly = F.col("id") % 50 == 0
    filled = {
        "kind": F.lit(KIND_RESULT),
        "ts_ms": F.lit(T0_MS) + F.floor(F.col("id") / apps) * 500,
        "application": F.concat(F.lit("app-"), F.lpad((F.col("id") % apps).cast("string"), len(str(apps)), "0")),
        "agg_function": F.lit("none"),
        "agg_window_millis": F.lit(0),
        "agg_value": value,
        "detector": F.lit("ema"),
        "value_lower_limit": F.round(value - 7.5, 6),
        "value_upper_limit": F.round(value + 7.5, 6),
        "anomaly_probability": F.when(anomaly, F.lit(0.99991)).otherwise(F.round(F.rand(11) * 0.9, 6)),
        "is_anomaly": anomaly,
        "explanation": F.when(anomaly, F.lit('{"kind":"spike","sigma":4.2,"expected":[92.5,107.5],"by":"ema"}')),
    }
    columns = [filled.get(c, F.lit(None)).cast(OPERATOR_TYPES[c]).alias(c) for c in OPERATOR_COLUMNS]
    return spark.range(records, numPartitions=2).select(*columns).cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="results per write (default 1,000,000)")
    parser.add_argument("--apps", type=int, default=1000, help="applications the results are spread over")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all codecs; the first is warm-up")
    parser.add_argument("--codecs", default="none,gzip,lz4,zstd", help=f"comma list of {','.join(CODECS)}")
    args = parser.parse_args(argv)
    codecs = [c for c in args.codecs.split(",") if c] + [PROJECTION]
    unknown = [c for c in codecs if c not in (*CODECS, PROJECTION)]
    if unknown or "none" not in codecs:
        parser.error(f"--codecs: choose from {', '.join(CODECS)}, with none (the anchor) among them")
    if args.rounds < 2:
        parser.error("--rounds: at least 2 (the first is warm-up)")
    logging.basicConfig(level=logging.WARNING)
    from jobs.config import PRODUCER_DEFAULTS
    from jobs.sinks import kafka_records
    from tools.local_kafka import LocalKafkaBroker

    work = Path(tempfile.mkdtemp(prefix="anomaly-bench-compression-"))
    with LocalKafkaBroker(work / "kafka", num_partitions=2, heap="1g") as broker:
        spark = bench_session("kafka-compression", 2)
        batch = results_batch(spark, args.records, args.apps)
        print(
            f"{batch.count():,} results over {args.apps:,} applications, cached; "
            f"{len(codecs)} codecs x {args.rounds} rounds"
        )
        seconds: dict[str, list[float]] = {c: [] for c in codecs}
        broker_cpu: dict[str, list[float]] = {c: [] for c in codecs}
        disk: dict[str, int] = {}
        assert broker.pid is not None
        for rnd in range(args.rounds):
            for codec in codecs:
                topic = f"results-{codec}-{rnd}"
                cpu_before, started = process_cpu_s(broker.pid), time.monotonic()
                records = kafka_records(batch, topic, f"{topic}-dlq")
                if codec == PROJECTION:
                    records.write.format("noop").mode("overwrite").save()
                else:
                    records.write.format("kafka").options(
                        **{"kafka.bootstrap.servers": broker.bootstrap_servers, **PRODUCER_DEFAULTS},
                        **{"kafka.compression.type": codec},
                    ).save()
                took = time.monotonic() - started
                cpu = process_cpu_s(broker.pid) - cpu_before
                print(f"  round {rnd} {codec:6s} {took:6.2f} s, broker CPU {cpu:5.2f} s", flush=True)
                if rnd > 0:
                    seconds[codec].append(took)
                    broker_cpu[codec].append(cpu)
                disk[codec] = topic_bytes(work / "kafka" / "data", topic) if codec != PROJECTION else 0
        spark.stop()
    per_record_us = {c: statistics.median(seconds[c]) / args.records * 1e6 for c in codecs}
    cpu_per_m = {c: statistics.median(broker_cpu[c]) / args.records * 1e6 for c in codecs}
    bytes_per = {c: disk[c] / args.records for c in codecs}
    print()
    print(
        f"{'codec':8s} {'write us/rec':>12s} {'vs none':>8s} {'broker CPU s/M':>15s} {'vs none':>8s} "
        f"{'disk B/rec':>11s} {'vs none':>8s}  kafka-python needs"
    )
    for c in codecs:
        if c == PROJECTION:
            continue
        print(
            f"{c:8s} {per_record_us[c]:12.2f} {per_record_us[c] / per_record_us['none']:8.2f} "
            f"{cpu_per_m[c]:15.2f} {cpu_per_m[c] / max(cpu_per_m['none'], 1e-9):8.2f} "
            f"{bytes_per[c]:11.1f} {bytes_per[c] / bytes_per['none']:8.2f}  {KAFKA_PYTHON_NEEDS[c]}"
        )
    print(
        f"{'(records built, written to noop)':33s} {per_record_us[PROJECTION]:5.2f} us/rec: "
        f"{per_record_us[PROJECTION] / per_record_us['none']:.2f} of the uncompressed write"
    )
    print(f"(median of {args.rounds - 1} rounds after the warm-up; {os.cpu_count()} cores, broker on the same machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
