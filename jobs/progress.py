"""Progress: one log line per micro-batch, from a StreamingQueryListener.

    [web] batch 12: 48,000 in (9,612/s), 1,200 results, 3 anomalies, 2 dead letters (invalid_json 1, late 1),
          1.84 s (kafka 1.51, jdbc 0.25)

(one line in the log; "kafka" is reading, validating, windowing and scoring the
batch and writing it to Kafka -- one pass --, "jdbc" the upsert).

The input figures come from Spark's progress event, and so do the results,
anomalies and dead letters: the query observes them while the sink stage
(jobs/sinks.py) writes the batch (``observedMetrics``); the sink adds its timings.
Spark's own INFO logging stays off (conf/log4j2.properties).
"""

from __future__ import annotations

import logging
import threading
import time

from pyspark.sql.streaming import StreamingQueryListener
from pyspark.sql.streaming.listener import (
    QueryIdleEvent,
    QueryProgressEvent,
    QueryStartedEvent,
    QueryTerminatedEvent,
)

from jobs.sinks import BOARD, STATS_METRICS, BatchStats, StatsBoard

log = logging.getLogger("anomaly.progress")


def format_progress(progress: dict, stats_board: StatsBoard = BOARD) -> str:
    name = progress.get("name") or progress.get("id")
    batch_id = int(progress["batchId"])
    rows = int(progress.get("numInputRows") or 0)
    rate = float(progress.get("processedRowsPerSecond") or 0.0)
    duration_s = (progress.get("durationMs") or {}).get("triggerExecution", 0) / 1000.0
    timings = stats_board.pop(str(name), batch_id)
    metrics = (progress.get("observedMetrics") or {}).get(STATS_METRICS)
    stats = BatchStats.of_metrics(metrics) if metrics is not None else None
    parts = [f"[{name}] batch {batch_id}: {rows:,} in ({rate:,.0f}/s)"]
    if stats is not None:
        parts.append(f"{stats.results:,} results")
        parts.append(f"{stats.anomalies:,} anomalies")
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(stats.by_reason.items()))
        parts.append(f"{stats.dead_letters:,} dead letters" + (f" ({reasons})" if reasons else ""))
    watermark = (progress.get("eventTime") or {}).get("watermark")
    if watermark:
        parts.append(f"watermark {watermark}")
    timing = f"{duration_s:.2f} s"
    if timings:
        timing += " (" + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()) + ")"
    parts.append(timing)
    return ", ".join(parts)


class ProgressListener(StreamingQueryListener):
    """Logs one line per micro-batch; the job's operators read nothing from here."""

    def __init__(self, stats_board: StatsBoard = BOARD) -> None:
        self.stats_board = stats_board
        self._terminated: set[str] = set()
        self._changed = threading.Condition()

    def wait_terminated(self, query_ids: list[str], timeout_s: float = 30.0) -> bool:
        """Wait until the terminated event of every query has been handled here.

        Spark's listener bus delivers events asynchronously and in order, so once
        a query's terminated event has arrived its last progress event (the batch
        an --available-now run ends with) has been logged too. Removing the
        listener or stopping the session before that loses the last line and
        makes the JVM log a py4j "Connection reset" stack trace.
        """
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not set(query_ids) <= self._terminated:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def onQueryStarted(self, event: QueryStartedEvent) -> None:
        log.info("[%s] started (id %s, run %s)", event.name, event.id, event.runId)

    def onQueryProgress(self, event: QueryProgressEvent) -> None:
        progress = event.progress
        data = {
            "name": progress.name,
            "id": str(progress.id),
            "batchId": progress.batchId,
            "numInputRows": progress.numInputRows,
            "processedRowsPerSecond": progress.processedRowsPerSecond,
            "durationMs": dict(progress.durationMs),
            "eventTime": dict(progress.eventTime),
            "observedMetrics": dict(progress.observedMetrics),
        }
        log.info("%s", format_progress(data, self.stats_board))

    def onQueryIdle(self, event: QueryIdleEvent) -> None:
        pass

    def onQueryTerminated(self, event: QueryTerminatedEvent) -> None:
        if event.exception:
            log.error("query %s failed: %s", event.id, event.exception.splitlines()[0])
        else:
            log.info("query %s stopped", event.id)
        with self._changed:
            self._terminated.add(str(event.id))
            self._changed.notify_all()
