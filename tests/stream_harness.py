"""Run the job's scoring pipeline on a file stream instead of Kafka, for fast tests.

Each ``send`` writes one file of lines, which Spark reads as one micro-batch
through exactly the code the job runs after its Kafka reader
(``jobs.query.score_events``), into a memory sink.
"""

from __future__ import annotations

import itertools
import json
import uuid
from pathlib import Path
from typing import Any

from pyspark.sql import functions as F

from jobs.config import StreamConfig, parse_config
from jobs.query import score_events


def stream_config(
    agg_function: str = "none",
    agg_window_millis: int = 0,
    allowed_lateness_millis: int = 0,
    detectors: list[Any] | None = None,
    buckets: int | None = None,
    **source: Any,
) -> StreamConfig:
    raw = {
        "checkpoint_dir": "unused",
        "streams": [
            {
                "name": "test",
                "source": {"bootstrap_servers": "unused:9092", "topics": ["t"], **source},
                "aggregation": {
                    "agg_function": agg_function,
                    "agg_window_millis": agg_window_millis,
                    "allowed_lateness_millis": allowed_lateness_millis,
                },
                "detectors": detectors or [{"name": "ema", "params": {"window": 5, "warmup": 2}}],
                "sinks": {"output_topic": "out", "dead_letter_topic": "dlq"},
                **({"buckets": buckets} if buckets is not None else {}),
            }
        ],
    }
    return parse_config(raw).streams[0]


class FileStream:
    def __init__(self, spark: Any, tmp_path: Path, stream: StreamConfig) -> None:
        self.spark = spark
        self.dir = tmp_path / f"in-{uuid.uuid4().hex[:6]}"
        self.dir.mkdir(parents=True)
        self.name = f"out_{uuid.uuid4().hex[:8]}"
        self._files = itertools.count()
        self._offsets = itertools.count()
        lines = spark.readStream.format("text").option("maxFilesPerTrigger", 1).load(str(self.dir))
        # each line is "<offset>\t<payload>": the harness numbers records like Kafka offsets
        parts = F.split(F.col("value"), "\t", 2)
        records = lines.select(
            F.lit(None).cast("binary").alias("key"),
            parts[1].cast("binary").alias("value"),
            F.lit("t").alias("topic"),
            F.lit(0).alias("partition"),
            parts[0].cast("long").alias("offset"),
            F.current_timestamp().alias("timestamp"),
        )
        self.query = (
            score_events(records, stream)
            .writeStream.format("memory")
            .queryName(self.name)
            .outputMode("append")
            .option("checkpointLocation", str(tmp_path / f"ck-{self.name}"))
            .start()
        )

    def send(self, *messages: Any, wait: bool = True) -> None:
        """One micro-batch: dicts are JSON-encoded, strings are sent as they are."""
        index = next(self._files)
        path = self.dir / f"{index:05d}.txt"
        tmp = self.dir / f".{index:05d}.tmp"
        lines = [f"{next(self._offsets)}\t{m if isinstance(m, str) else json.dumps(m)}" for m in messages]
        tmp.write_text("\n".join(lines) + "\n")
        tmp.rename(path)
        if wait:
            self.wait()

    def wait(self) -> None:
        self.query.processAllAvailable()

    def rows(self, kind: str = "result") -> list[dict[str, Any]]:
        df = self.spark.sql(f"select * from {self.name} where kind = '{kind}'")
        return [r.asDict() for r in df.orderBy("application", "detector", "ts_ms", "src_offset").collect()]

    def frame(self, kind: str = "result") -> Any:
        return self.spark.sql(f"select * from {self.name} where kind = '{kind}'")

    def stop(self) -> None:
        self.query.stop()


def msg(app: str, value: float, seconds: float) -> dict[str, Any]:
    """A message at 2024-01-01T00:00:00Z + seconds."""
    from datetime import datetime, timedelta, timezone

    ts = datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=seconds)
    return {
        "application": app,
        "value": value,
        "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


T0_MS = 1704067200000  # 2024-01-01T00:00:00Z
