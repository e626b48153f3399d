"""End-to-end throughput, key scaling, latency and memory of the streaming job, against anchors.

    .venv/bin/python bench/throughput.py            # 2M events; 1,000 / 10,000 / 100,000 applications
    .venv/bin/python bench/throughput.py --quick    # 300k events; 1,000 / 20,000 applications (< 10 min)

Everything below runs in ONE process, on the same cores, against one local
broker (tools/local_kafka.py) and one local-mode SparkSession:

1. **Input.** For each application count, ``--events`` synthetic JSON events
   into their own topic (``--partitions`` partitions), produced in event-time
   order: application ``i % apps`` gets one event every 500 ms of event time
   (``--step-ms``).
   (So the more applications, the shorter the event-time span: at 100,000
   applications 2M events cover 10 s, and the ``avg`` case closes few windows;
   the ``results`` column shows it.)
2. **Anchors** on each topic, each a streaming query with ``availableNow`` and
   the job's ``maxOffsetsPerTrigger``, into Spark's ``noop`` sink:
   ``kafka`` = Spark's Kafka source alone; ``ingest`` = read + validate
   (``jobs.source.parse_messages``) + ``repartition`` by application;
   ``native`` = ingest + 2 s watermark + Spark's own
   ``groupBy(window(event_time, "10 seconds"), application).agg(avg(value))``.
3. **Job cases** through the job's own entry point (``jobs.main.run``):
   ``avg`` over 10 s windows with EMA + Robust (ratio to ``native``) and
   ``none`` with EMA (ratio to ``ingest``). events/s is always input rows over
   the summed batch durations (``triggerExecution``), anchors and job alike.
   ``--cases`` adds the product's ``default`` detector on the same input:
   ``none-default`` and ``avg-default`` (10 s windows). A table then lists
   every job case's events/s against ``none`` + EMA at the same applications
   (same input, same run) and against itself at the fewest applications (1.0 =
   flat in applications), with its p50 batch and state per application. For
   ``default`` to have every part active, give each application enough points
   at a cadence its parts use, e.g.::

       bench/throughput.py --events 520000 --apps 200,2000,20000 --max-offsets 100000 \
           --step-ms 300000 --cases none,none-default,avg,avg-default \
           --only-at 20000=none,none-default --latency-seconds 0

   (200 applications x 2,600 points every 5 minutes: nine days each;
   ``--step-ms`` sets an application's event spacing, ``--only-at APPS=NAMES``
   what runs at that application count, anchors included).
   The job runs its incident layer (incidents/) in every case, as it does by
   default; ``avg-noinc`` and ``none-noinc`` are ``avg`` and ``none`` with it
   off (``incidents: {enabled: false}``), so ``--cases none,none-noinc,avg,avg-noinc``
   measures what it costs (the table's "vs none + EMA" column for ``none-noinc``).
4. **Key cost.** A least-squares fit over the job's data batches of
   ``batch seconds = a * keys_in_batch + b * events_in_batch + c``, per case,
   where keys_in_batch = min(applications, events in the batch) (the topics are
   produced round-robin over applications, so any run of N offsets holds
   min(apps, N) of them). When every batch has the same size, ``b`` and ``c``
   cannot be told apart: the fit then drops ``c`` and says so.
5. **Latency.** Spark batch writes in 1 s slices produce at half the measured
   ``none`` throughput (fewest applications) for ``--latency-seconds`` while
   the ``none`` + EMA case runs with a 5 s processing-time trigger; a 15 s tail
   keeps the watermark moving so that the measured window's events get their
   results. Latency = output record's Kafka timestamp (CreateTime, stamped by
   Spark's producer when the job sends the result) - input record's Kafka
   timestamp (CreateTime, stamped when the bench's writer sent it), joined on
   (application, ts); p50 and p99 over the events of the measured window.
6. **Memory and state.** /proc is sampled every 0.5 s during each case: peak
   RSS of the driver JVM, and peak summed PSS of its Python worker processes
   (PSS, so pages the forked workers share with their daemon count once).
   State bytes per application = bytes of the keys and values of the job's
   value state (``key_state``, one per application, or ``bucket_state``, one
   per bucket of applications), read back with Spark's ``statestore`` data
   source, divided by the applications; shown after the middle and after the
   last data batch (``mid/end``: batches of equal size leave equal open windows
   behind, so a difference is growth with batches).

The last line is the verdict, exactly::

    throughput: avg/native=<r> none/ingest=<r> keys=<r> p99_latency_s=<s>

``avg/native`` and ``none/ingest`` are taken at the fewest applications;
``keys`` is job events/s at the most applications over events/s at the fewest,
the minimum over the two cases (the case that scales worse decides). A value
that was not measured (case or phase not run) prints as ``nan``.

A short warm-up query (not reported) runs first so that the JVM's JIT and the
Python workers' start-up are not charged to whichever case comes first.
Not run in CI; docs/benchmarks.md records the latest run.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

T0_MS = 1_704_067_200_000
STEP_MS = 500
WINDOW = "10 seconds"
WATERMARK = "2 seconds"
TRIGGER = "5 seconds"
LATENCY_TAIL_S = 15
SAMPLE_EVERY_S = 0.5
STATE_VAR_NAMES = ("key_state", "bucket_state")
CASES: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {
    "avg": (
        {"agg_function": "avg", "agg_window_millis": 10_000, "allowed_lateness_millis": 2_000},
        [{"name": "ema"}, {"name": "robust"}],
    ),
    "none": ({"agg_function": "none"}, [{"name": "ema"}]),
    # the product's default detector beside EMA, on the same input (--cases to run them)
    "avg-default": (
        {"agg_function": "avg", "agg_window_millis": 10_000, "allowed_lateness_millis": 2_000},
        [{"name": "default"}],
    ),
    "none-default": ({"agg_function": "none"}, [{"name": "default"}]),
}
# the same as their base case with the incident layer off (every other case runs it, the job's default)
INCIDENTS_OFF = {"avg-noinc": "avg", "none-noinc": "none"}
for _case, _base in INCIDENTS_OFF.items():
    CASES[_case] = CASES[_base]
CASE_LABELS = {
    "avg": "avg 10 s + EMA + Robust",
    "none": "none + EMA",
    "avg-default": "avg 10 s + default",
    "none-default": "none + default",
    "avg-noinc": "avg 10 s + EMA + Robust, no incidents",
    "none-noinc": "none + EMA, no incidents",
}
# the anchor each job case is compared with
ANCHOR_OF = {"avg": "native", "none": "ingest", "avg-default": "native", "none-default": "ingest",
             "avg-noinc": "native", "none-noinc": "ingest"}
ANCHORS = ("kafka", "ingest", "native")
EMA_CASES = ("avg", "none")  # the verdict line's cases
DETECTOR_ANCHOR = "none"  # every job case is also compared with none + EMA at the same applications


# -- pure helpers (tests/test_bench_helpers.py) -------------------------------------------
@dataclass(frozen=True)
class CostFit:
    """Least-squares fit of batch seconds = per_key * keys + per_event * events (+ per_batch)."""

    per_key_s: float
    per_event_s: float
    per_batch_s: float | None  # None: dropped, every batch had the same number of events
    batches: int

    def describe(self) -> str:
        if self.batches == 0 or math.isnan(self.per_key_s):
            return f"not enough batches to fit ({self.batches})"
        text = f"{self.per_key_s * 1e6:,.2f} us per key per batch, {self.per_event_s * 1e6:,.2f} us per event"
        if self.per_batch_s is None:
            return text + " (fixed cost per batch folded into the per-event cost: every batch had the same size)"
        return text + f", {self.per_batch_s:,.2f} s fixed per batch"


def fit_costs(keys: Sequence[float], events: Sequence[float], seconds: Sequence[float]) -> CostFit:
    """Fit ``seconds = a*keys + b*events + c`` by least squares.

    ``c`` is dropped when the events column carries no information beyond the
    constant (all batches the same size), because then b and c are not
    identifiable; with fewer batches than unknowns every figure is NaN.
    """
    k = np.asarray(keys, dtype=float)
    e = np.asarray(events, dtype=float)
    y = np.asarray(seconds, dtype=float)
    full = np.column_stack([k, e, np.ones_like(k)])
    design, intercept = (full, True) if np.linalg.matrix_rank(full) == 3 else (full[:, :2], False)
    if len(y) < design.shape[1] or np.linalg.matrix_rank(design) < design.shape[1]:
        return CostFit(float("nan"), float("nan"), None, len(y))
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return CostFit(float(coef[0]), float(coef[1]), float(coef[2]) if intercept else None, len(y))


def keys_in_batch(applications: int, events: int) -> int:
    """Distinct applications in a run of ``events`` consecutive offsets of a round-robin topic."""
    return min(applications, events)


def fmt_ratio(value: float) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.2f}"


def summary_line(avg_native: float, none_ingest: float, keys: float, p99_latency_s: float) -> str:
    """The benchmark's last line (a fixed format, one line, for scripts to compare)."""
    return (
        f"throughput: avg/native={fmt_ratio(avg_native)} none/ingest={fmt_ratio(none_ingest)} "
        f"keys={fmt_ratio(keys)} p99_latency_s={fmt_ratio(p99_latency_s)}"
    )


def ratio(numerator: float | None, denominator: float | None) -> float:
    if numerator is None or denominator is None or not denominator or math.isnan(denominator):
        return float("nan")
    return numerator / denominator


def keys_ratio(events_s: dict[tuple[str, int], float], cases: Sequence[str], apps: Sequence[int]) -> float:
    """min over cases of events/s at the most applications over events/s at the fewest."""
    if len(apps) < 2:
        return float("nan")
    few, many = min(apps), max(apps)
    ratios = [ratio(events_s.get((c, many)), events_s.get((c, few))) for c in cases]
    ratios = [r for r in ratios if not math.isnan(r)]
    return min(ratios) if ratios else float("nan")


def app_width(applications: int) -> int:
    """Digits of the zero-padded application number (``app-000042``): never truncates."""
    return max(4, len(str(max(applications - 1, 0))))


def parse_only_at(texts: Sequence[str], apps: Sequence[int]) -> dict[int, set[str]]:
    """``["20000=none,none-default"]`` -> {20000: {"none", "none-default"}}: what runs at that
    application count (job cases and anchors by name; anchors not named are skipped there)."""
    known = {*CASES, *ANCHORS}
    out: dict[int, set[str]] = {}
    for text in texts:
        count, sep, names = text.partition("=")
        chosen = {n.strip() for n in names.split(",") if n.strip()}
        if not sep or not count.strip().isdigit() or not chosen:
            raise ValueError(f"--only-at {text!r}: expected APPS=NAME[,NAME...], e.g. 20000=none,none-default")
        if int(count) not in apps:
            raise ValueError(f"--only-at {text!r}: {int(count):,} is not one of --apps {','.join(map(str, apps))}")
        unknown = sorted(chosen - known)
        if unknown:
            raise ValueError(
                f"--only-at {text!r}: unknown {', '.join(unknown)}; choose from {', '.join(sorted(known))}"
            )
        out[int(count)] = chosen
    return out


def runs_at(only_at: dict[int, set[str]], apps: int, name: str) -> bool:
    return apps not in only_at or name in only_at[apps]


def parse_apps(text: str) -> list[int]:
    apps = sorted({int(x) for x in text.split(",") if x.strip()})
    if not apps or apps[0] < 1:
        raise argparse.ArgumentTypeError(f"--apps: a comma list of positive integers, got {text!r}")
    return apps


def bench_session(app_name: str, partitions: int, extra: dict[str, str] | None = None) -> Any:
    """The benchmarks' local SparkSession: shuffle partitions as given, no UI, Spark's WARN lines off."""
    from jobs.session import build_session

    spark = build_session(
        app_name,
        conf={
            "spark.sql.shuffle.partitions": str(partitions),
            "spark.ui.enabled": "false",
            # on a busy shared machine a Python worker can take longer than the default to
            # connect back to the JVM (seen: "Python worker failed to connect back")
            "spark.python.authenticate.socketTimeout": "120s",
            **(extra or {}),
        },
    )
    # Spark's WARN lines (one per new key from the state server, "falling behind"...) would bury the report
    spark.sparkContext.setLogLevel("ERROR")
    return spark


# -- /proc sampling ------------------------------------------------------------------------
def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, cmdline) for every process we can read."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in (...) may hold spaces
        table[int(entry.name)] = (ppid, cmdline)
    return table


def _descendants(table: dict[int, tuple[int, str]], root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _status_kb(path: str, field_name: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field_name):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemorySampler:
    """Peak RSS of the driver JVM and peak summed PSS of its Python workers, sampled every 0.5 s."""

    def __init__(self) -> None:
        self.driver_kb = 0
        self.workers_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        table = _proc_table()
        mine = _descendants(table, os.getpid())
        drivers = [p for p in mine if "org.apache.spark.deploy.SparkSubmit" in table[p][1]]
        for driver in drivers:
            self.driver_kb = max(self.driver_kb, _status_kb(f"/proc/{driver}/status", "VmRSS:"))
            workers = _descendants(table, driver)
            total = sum(_status_kb(f"/proc/{w}/smaps_rollup", "Pss:") for w in workers)
            self.workers_kb = max(self.workers_kb, total)

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(SAMPLE_EVERY_S):
                self._sample()
                return

    def describe(self) -> str:
        return f"{self.driver_kb / 1024:,.0f}/{self.workers_kb / 1024:,.0f}"


# -- Spark side ----------------------------------------------------------------------------
class Collector:
    """Progress of every query, by query id; knows when a query's last event has arrived."""

    def __init__(self) -> None:
        from pyspark.sql.streaming import StreamingQueryListener

        from jobs.sinks import STATS_METRICS

        collector = self

        class _Listener(StreamingQueryListener):
            def onQueryStarted(self, event) -> None:
                with collector.lock:
                    collector.names[str(event.id)] = event.name

            def onQueryProgress(self, event) -> None:
                p = event.progress
                with collector.lock:
                    stats = (p.observedMetrics or {}).get(STATS_METRICS)  # the job's counts, if any
                    collector.batches.setdefault(p.name, []).append(
                        {
                            "batch": p.batchId,
                            "rows": p.numInputRows,
                            "ms": p.durationMs.get("triggerExecution", 0),
                            "results": stats["results"] if stats is not None else 0,
                        }
                    )

            def onQueryIdle(self, event) -> None:
                pass

            def onQueryTerminated(self, event) -> None:
                with collector.lock:
                    collector.terminated.add(collector.names.get(str(event.id), str(event.id)))

        self.lock = threading.Lock()
        self.names: dict[str, str] = {}
        self.batches: dict[str, list[dict]] = {}
        self.terminated: set[str] = set()
        self.listener = _Listener()

    def started(self, name: str) -> bool:
        with self.lock:
            return name in self.names.values()

    def of(self, name: str, timeout: float = 10.0) -> list[dict]:
        """The batches of query ``name``, once its termination event has arrived (events are async)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if name in self.terminated:
                    break
            time.sleep(0.1)
        with self.lock:
            return list(self.batches.get(name, []))


@dataclass
class Row:
    case: str
    apps: int
    events: int = 0
    batches: list[dict] = field(default_factory=list)
    results: int | None = None
    anchor: str | None = None
    state_mid: float = float("nan")
    state_end: float = float("nan")
    memory: str = ""

    @property
    def busy_s(self) -> float:
        return sum(b["ms"] for b in self.batches) / 1000

    @property
    def events_s(self) -> float:
        return self.events / self.busy_s if self.busy_s else float("nan")

    def batch_seconds(self, q: float) -> float:
        durations = [b["ms"] / 1000 for b in self.batches if b["rows"] > 0]
        return float(np.percentile(durations, q)) if durations else float("nan")


def produce(spark, bootstrap: str, topic: str, events: int, apps: int, step_ms: int = STEP_MS) -> float:
    from pyspark.sql import functions as F

    started = time.monotonic()
    app = F.concat(F.lit("app-"), F.lpad((F.col("id") % apps).cast("string"), app_width(apps), "0"))
    ts_ms = F.lit(T0_MS) + F.floor(F.col("id") / apps) * step_ms
    (
        # One writer, in id (= event-time) order: several writers would interleave
        # their time ranges in every Kafka partition, and the watermark raised by the
        # newest range would make the older ones late (half the events, measured).
        spark.range(events, numPartitions=1)
        .select(app.cast("binary").alias("key"), _payload(app, ts_ms).cast("binary").alias("value"))
        .write.format("kafka")
        .option("kafka.bootstrap.servers", bootstrap)
        .option("topic", topic)
        .option("kafka.linger.ms", "50")
        .option("kafka.batch.size", "524288")
        .save()
    )
    return time.monotonic() - started


def _payload(app, ts_ms):
    from pyspark.sql import functions as F

    value = F.round(100 + 10 * F.sin(F.col("id") / 997.0) + F.rand(7) * 5, 3)
    return F.to_json(
        F.struct(
            app.alias("application"),
            value.alias("value"),
            F.date_format(F.timestamp_millis(ts_ms), "yyyy-MM-dd'T'HH:mm:ss.SSS'Z'").alias("ts"),
        )
    )


def stream_config(
    name: str, bootstrap: str, topic: str, case: str, max_offsets: int, buckets: int | None
) -> dict[str, Any]:
    aggregation, detectors = CASES[case]
    stream: dict[str, Any] = {
        "name": name,
        # metrics only: no incident feedback topic to subscribe to (the benchmark creates none)
        "source": {
            "bootstrap_servers": bootstrap, "topics": [topic], "max_offsets_per_trigger": max_offsets,
            "feedback_topic": None,
        },
        "aggregation": dict(aggregation),
        "detectors": [dict(d) for d in detectors],
        "sinks": {"output_topic": f"{name}-out", "dead_letter_topic": f"{name}-dlq"},
    }
    if buckets is not None:  # only when asked: a job without the field refuses it
        stream["buckets"] = buckets
    if case in INCIDENTS_OFF:
        stream["incidents"] = {"enabled": False}
    return stream


def anchor_frame(spark, kind: str, source) -> Any:
    from pyspark.sql import functions as F

    from jobs.source import parse_messages, read_kafka

    records = read_kafka(spark, source)
    if kind == "kafka":
        return records
    events = parse_messages(records, source)
    if kind == "ingest":
        return events.repartition("gkey")
    return (
        events.filter(F.col("reason").isNull())
        .withWatermark("event_time", WATERMARK)
        .groupBy(F.window("event_time", WINDOW), F.col("gkey"))
        .agg(F.avg("value").alias("avg_value"))
    )


def run_anchor(spark, collector: Collector, kind: str, source, apps: int, checkpoint: str, tag: str = "") -> Row:
    name = f"anchor-{kind}-{apps}{tag}"
    row = Row(kind, apps)
    with MemorySampler() as memory:
        query = (
            anchor_frame(spark, kind, source)
            .writeStream.format("noop")
            .queryName(name)
            .option("checkpointLocation", checkpoint)
            .trigger(availableNow=True)
            .start()
        )
        query.awaitTermination()
    row.memory = memory.describe()
    row.batches = collector.of(name)
    row.events = sum(b["rows"] for b in row.batches)
    data = [b["batch"] for b in row.batches if b["rows"] > 0]
    if kind == "native" and data:
        row.state_end = state_bytes(spark, checkpoint, data[-1], None) / apps
    return row


def run_job_case(
    spark, collector: Collector, job_config: dict[str, Any], case: str, apps: int, read_state: bool = True
) -> Row:
    from jobs.config import parse_config
    from jobs.main import run

    config = parse_config(job_config)
    stream = config.streams[0]
    row = Row(case, apps, results=0, anchor=ANCHOR_OF[case])
    with MemorySampler() as memory:
        code = run(config, spark=spark)
    if code != 0:
        raise SystemExit(f"the job failed on case {case} with {apps} applications (exit code {code})")
    row.memory = memory.describe()
    row.batches = collector.of(stream.name)
    row.events = sum(b["rows"] for b in row.batches)
    row.results = sum(b["results"] for b in row.batches)
    checkpoint = f"{config.checkpoint_dir.rstrip('/')}/{stream.name}"
    # after the middle and the last *data* batch: equal-sized batches leave equal open windows
    # behind, so any difference is growth (the final no-data batch only drains them)
    data = [b["batch"] for b in row.batches if b["rows"] > 0]
    if data and read_state:
        row.state_mid = state_bytes(spark, checkpoint, data[(len(data) - 1) // 2], STATE_VAR_NAMES) / apps
        row.state_end = state_bytes(spark, checkpoint, data[-1], STATE_VAR_NAMES) / apps
    return row


def _bytes_of(column, data_type):
    """Bytes a value takes in the state store, roughly: variable-length fields by length, others by width."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if isinstance(data_type, T.StructType):
        parts = [_bytes_of(column[f.name], f.dataType) for f in data_type.fields]
        return sum(parts[1:], parts[0]) if parts else F.lit(0)
    if isinstance(data_type, (T.StringType, T.BinaryType)):
        return F.coalesce(F.octet_length(column), F.lit(0))
    if isinstance(data_type, T.ArrayType):
        return F.coalesce(F.octet_length(F.to_json(column)), F.lit(0))
    width = {T.IntegerType: 4, T.FloatType: 4, T.ShortType: 2, T.ByteType: 1, T.BooleanType: 1}
    return F.lit(width.get(type(data_type), 8))


def state_bytes(spark, checkpoint: str, batch_id: int, var_names: Sequence[str] | None) -> float:
    """Total bytes of state keys and values at ``batch_id`` (NaN if the checkpoint cannot be read)."""
    from pyspark.sql import functions as F

    errors = []
    for var_name in var_names or (None,):
        reader = spark.read.format("statestore").option("path", checkpoint).option("batchId", batch_id)
        if var_name is not None:
            reader = reader.option("stateVarName", var_name)
        try:
            state = reader.load()
            size = _bytes_of(F.col("key"), state.schema["key"].dataType) + _bytes_of(
                F.col("value"), state.schema["value"].dataType
            )
            return float(state.select(F.sum(size).alias("b")).first()["b"] or 0.0)
        except Exception as err:  # the other layout's variable, or an unreadable checkpoint
            errors.append(f"{var_name}: {str(err).splitlines()[0][:160]}")
    logging.getLogger("bench").warning("could not read state at %s: %s", checkpoint, "; ".join(errors))
    return float("nan")


# -- latency phase -------------------------------------------------------------------------
@dataclass
class Latency:
    rate: int
    produced: int = 0
    in_window: int = 0
    matched: int = 0
    p50_s: float = float("nan")
    p99_s: float = float("nan")
    max_lag_s: float = 0.0
    write_s: float = float("nan")
    seconds: int = 0
    memory: str = ""

    def describe(self) -> str:
        missing = self.in_window - self.matched
        return (
            f"latency (none + EMA, {TRIGGER} trigger): {self.rate:,} events/s asked for {self.seconds} s "
            f"(+{LATENCY_TAIL_S} s tail), {self.produced:,} produced in {self.write_s:.0f} s, writer at most "
            f"{self.max_lag_s:.1f} s behind its schedule; {self.matched:,} of {self.in_window:,} events in the "
            f"measured window have their result ({missing:,} without: late or not emitted); "
            f"p50 {self.p50_s:.2f} s, p99 {self.p99_s:.2f} s (input CreateTime -> output CreateTime)"
        )


def latency_phase(
    spark,
    collector: Collector,
    bootstrap: str,
    broker,
    work: Path,
    apps: int,
    rate: int,
    seconds: int,
    partitions: int,
    buckets: int | None,
) -> Latency:
    from jobs.config import parse_config

    if rate > apps * 1000:
        raise SystemExit(f"latency rate {rate:,}/s would give an application two events in the same ms")
    topic, name = "latency-in", f"latency-none-{apps}"
    broker.create_topic(topic, partitions=partitions)
    broker.create_topic(f"{name}-out", partitions=partitions)
    stream = stream_config(name, bootstrap, topic, "none", 10_000_000, buckets)
    stream["source"].pop("max_offsets_per_trigger")  # a steady stream: take what is there
    config = parse_config(
        {
            "checkpoint_dir": str(work / "ck-latency"),
            "trigger": "processing_time",
            "trigger_interval": TRIGGER,
            "streams": [stream],
        }
    )
    result = Latency(rate=rate, seconds=seconds)
    failure: list[BaseException] = []
    with MemorySampler() as memory:
        t0_ms = _steady_run(spark, collector, config, name, bootstrap, topic, apps, result, failure)
    result.memory = memory.describe()
    if failure:
        raise SystemExit(f"latency phase: {failure[0]}")
    _latency_stats(spark, bootstrap, topic, name, t0_ms + seconds * 1000, result)
    return result


def _steady_run(
    spark, collector: Collector, config, name: str, bootstrap: str, topic: str, apps: int, result: Latency,
    failure: list[BaseException],
) -> int:
    """Run the job in a thread while writing ``result.rate`` events a second into ``topic``; stop it once it
    has read everything. Returns the epoch ms at which the first slice was due; failures go to ``failure``."""
    from jobs.main import run

    stop = threading.Event()

    def job() -> None:
        try:
            if run(config, spark=spark, stop_event=stop) != 0:
                failure.append(RuntimeError("the job's query failed in the latency phase"))
        except BaseException as err:  # reported by the main thread
            failure.append(err)

    runner = threading.Thread(target=job, name="latency-job", daemon=True)
    runner.start()
    deadline = time.monotonic() + 120
    while not collector.started(name) and not failure and time.monotonic() < deadline:
        time.sleep(0.2)
    t0_ms = _write_slices(spark, bootstrap, topic, apps, result, failure)
    # the job needs to read the tail (it moves the watermark past the measured window)
    deadline = time.monotonic() + 120
    while not failure and time.monotonic() < deadline:
        with collector.lock:
            batches = list(collector.batches.get(name, []))
        if sum(b["rows"] for b in batches) >= result.produced and batches[-1]["rows"] == 0:
            break
        time.sleep(0.5)
    stop.set()
    runner.join(timeout=120)
    return t0_ms


def _write_slices(spark, bootstrap: str, topic: str, apps: int, result: Latency, failure: list[BaseException]) -> int:
    """One slice of ``result.rate`` events a second, for the measured seconds and the tail; returns t0 in ms."""
    from pyspark.sql import functions as F

    rate = result.rate
    app = F.concat(F.lit("app-"), F.lpad((F.col("id") % apps).cast("string"), app_width(apps), "0"))
    # slice k is due at t0 + k s; its events' times spread over that second (event time = schedule)
    spark.sparkContext.setLocalProperty("spark.scheduler.pool", "bench-writer")
    t0 = float(int(time.time()) + 1)
    t0_ms = int(t0 * 1000)
    ts_ms = F.lit(t0_ms) + F.floor(F.col("id") * 1000 / rate)
    for k in range(result.seconds + LATENCY_TAIL_S):
        if failure:
            break
        delay = t0 + k - time.time()
        if delay > 0:
            time.sleep(delay)
        result.max_lag_s = max(result.max_lag_s, -delay)
        (
            spark.range(k * rate, (k + 1) * rate, numPartitions=1)
            .select(app.cast("binary").alias("key"), _payload(app, ts_ms).cast("binary").alias("value"))
            .write.format("kafka")
            .option("kafka.bootstrap.servers", bootstrap)
            .option("topic", topic)
            .option("kafka.linger.ms", "5")
            .save()
        )
        result.produced += rate
    result.write_s = time.time() - t0
    spark.sparkContext.setLocalProperty("spark.scheduler.pool", None)
    return t0_ms


def _latency_stats(spark, bootstrap: str, topic: str, name: str, window_end_ms: int, result: Latency) -> None:
    """Match each input event of the measured window to its result on the output topic: how many have
    one, and the p50/p99 of output CreateTime - input CreateTime."""
    from pyspark.sql import functions as F

    def read(topic_name: str, stamp: str):
        records = (
            spark.read.format("kafka")
            .option("kafka.bootstrap.servers", bootstrap)
            .option("subscribe", topic_name)
            .option("startingOffsets", "earliest")
            .load()
        )
        j = F.from_json(F.col("value").cast("string"), "application STRING, ts STRING")
        return records.select(
            j["application"].alias("application"),
            F.unix_millis(F.to_timestamp(j["ts"])).alias("ts_ms"),
            F.unix_millis(F.col("timestamp")).alias(stamp),
        )

    inputs = read(topic, "sent_ms").filter(F.col("ts_ms") < window_end_ms)
    # one detector: one result per event; min() in case a restart ever wrote one twice
    outputs = (
        read(f"{name}-out", "arrived_ms").groupBy("application", "ts_ms").agg(F.min("arrived_ms").alias("arrived_ms"))
    )
    joined = inputs.join(outputs, ["application", "ts_ms"], "left")
    stats = joined.select(
        F.count("*").alias("n"),
        F.count("arrived_ms").alias("matched"),
        F.percentile((F.col("arrived_ms") - F.col("sent_ms")) / 1000.0, [0.5, 0.99]).alias("p"),
    ).first()
    result.in_window, result.matched = int(stats["n"]), int(stats["matched"])
    if stats["p"] is not None:
        result.p50_s, result.p99_s = float(stats["p"][0]), float(stats["p"][1])


# -- report ----------------------------------------------------------------------------------
def machine() -> str:
    mem_kb = _status_kb("/proc/meminfo", "MemTotal:")
    load = os.getloadavg()
    return (
        f"machine: {os.cpu_count()} cores, {mem_kb / 1024**2:.1f} GiB memory; broker, Spark driver and Python "
        f"workers on the same cores; load average at the end {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}"
    )


def print_table(rows: list[Row], anchors: dict[tuple[str, int], Row]) -> None:
    header = (
        f"| {'case':<12} | {'apps':>7} | {'events':>9} | {'batches':>7} | {'events/s':>9} | {'anchor':>6} "
        f"| {'ratio':>5} | {'results':>9} | {'p50 batch s':>11} | {'p99 batch s':>11} "
        f"| {'state B/app mid/end':>19} | {'peak MiB JVM/py':>15} |"
    )
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        anchor_row = anchors.get((r.anchor, r.apps)) if r.anchor else None
        rel = fmt_ratio(ratio(r.events_s, anchor_row.events_s)) if anchor_row else "-"
        state = (
            "-"
            if math.isnan(r.state_end)
            else (f"{r.state_end:,.0f}" if math.isnan(r.state_mid) else f"{r.state_mid:,.0f}/{r.state_end:,.0f}")
        )
        print(
            f"| {r.case:<12} | {r.apps:>7,} | {r.events:>9,} | {sum(1 for b in r.batches if b['rows']):>7} "
            f"| {r.events_s:>9,.0f} | {r.anchor or '-':>6} | {rel:>5} "
            f"| {'-' if r.results is None else f'{r.results:,}':>9} | {r.batch_seconds(50):>11.2f} "
            f"| {r.batch_seconds(99):>11.2f} | {state:>19} | {r.memory:>15} |"
        )


def detector_table(rows: list[Row]) -> str:
    """Every job case's events/s against none + EMA at the same applications (same input, same run) and
    against itself at the fewest applications it ran at (flat in applications: 1.0)."""
    jobs = [r for r in rows if r.anchor is not None]
    by_key = {(r.case, r.apps): r for r in jobs}
    fewest = {c: min(r.apps for r in jobs if r.case == c) for c in {r.case for r in jobs}}
    lines = [
        "| case | apps | events/s | x none + EMA | x itself at fewest apps | p50 batch s | state B/app |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(jobs, key=lambda r: (list(CASES).index(r.case), r.apps)):
        anchor = by_key.get((DETECTOR_ANCHOR, r.apps))
        vs_ema = fmt_ratio(ratio(r.events_s, anchor.events_s)) if anchor else "-"
        flat = fmt_ratio(ratio(r.events_s, by_key[(r.case, fewest[r.case])].events_s))
        state = "-" if math.isnan(r.state_end) else f"{r.state_end:,.0f}"
        lines.append(
            f"| {CASE_LABELS.get(r.case, r.case)} | {r.apps:,} | {r.events_s:,.0f} | {vs_ema} "
            f"| {flat} (at {fewest[r.case]:,}) | {r.batch_seconds(50):.2f} | {state} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class Options:
    """The command line, with its defaults resolved."""

    events: int
    apps_list: list[int]
    max_offsets: int
    latency_s: int
    latency_rate: int | None
    cases: list[str]
    only_at: dict[int, set[str]]
    step_ms: int
    partitions: int
    buckets: int | None
    master: str | None


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="300k events, 1,000 and 20,000 applications, 60 s latency")
    parser.add_argument("--events", type=int, help="events per topic (default 2,000,000; --quick 300,000)")
    parser.add_argument("--apps", type=parse_apps, help="comma list of application counts (default 1000,10000,100000)")
    parser.add_argument("--partitions", type=int, default=4, help="Kafka partitions and shuffle partitions")
    parser.add_argument("--max-offsets", type=int, help="maxOffsetsPerTrigger (default 500,000; --quick 100,000)")
    parser.add_argument("--cases", default="avg,none", help=f"comma list of {','.join(CASES)}")
    parser.add_argument(
        "--only-at",
        action="append",
        default=[],
        metavar="APPS=NAMES",
        help="at that application count run only these cases and anchors, e.g. 20000=none,none-default",
    )
    parser.add_argument(
        "--step-ms",
        type=int,
        default=STEP_MS,
        help=f"event time between an application's events (default {STEP_MS}; 300000: 5-minute points)",
    )
    parser.add_argument("--latency-seconds", type=int, help="steady-rate phase (default 120; --quick 60; 0: skip)")
    parser.add_argument("--latency-rate", type=int, help="events/s of the latency phase (default: half of none)")
    parser.add_argument("--buckets", type=int, help="passed to each stream's config as 'buckets'")
    parser.add_argument(
        "--master",
        help="run on this Spark master (e.g. spark://127.0.0.1:7077 from scripts/cluster.sh) instead of local[*]; "
        "the code zip and packed environment are shipped as spark-submit.sh does",
    )
    args = parser.parse_args(argv)
    apps_list = args.apps or ([1000, 20_000] if args.quick else [1000, 10_000, 100_000])
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"--cases: unknown {', '.join(unknown)}; choose from {', '.join(CASES)}")
    try:
        only_at = parse_only_at(args.only_at, apps_list)
    except ValueError as err:
        parser.error(str(err))
    if args.step_ms < 1:
        parser.error("--step-ms must be >= 1")
    options = Options(
        events=args.events or (300_000 if args.quick else 2_000_000),
        apps_list=apps_list,
        max_offsets=args.max_offsets or (100_000 if args.quick else 500_000),
        latency_s=args.latency_seconds if args.latency_seconds is not None else (60 if args.quick else 120),
        latency_rate=args.latency_rate,
        cases=cases,
        only_at=only_at,
        step_ms=args.step_ms,
        partitions=args.partitions,
        buckets=args.buckets,
        master=args.master,
    )
    from jobs.config import ConfigError, parse_config

    for case in options.cases:  # before anything starts: e.g. --buckets on a job that has no such field
        try:
            parse_config(
                {
                    "checkpoint_dir": "unused",
                    "streams": [
                        stream_config("check", "127.0.0.1:9092", "check", case, options.max_offsets, options.buckets)
                    ],
                }
            )
        except ConfigError as err:
            parser.error(f"the job refuses the benchmark's stream config: {err}")
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    if options.master:
        os.environ["ANOMALY_SPARK_MASTER"] = options.master  # read by jobs.session.build_session
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "py4j"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from tools.local_kafka import LocalKafkaBroker

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="anomaly-bench-"))
    shipping: dict[str, str] = {}
    if options.master and options.master.startswith("spark://"):
        from tools.cluster import shipping_conf  # the project's code and venv for the executors

        shipping = shipping_conf()
    spark = bench_session(
        "anomaly-bench",
        options.partitions,
        {
            **shipping,
            # FAIR only matters in the latency phase, where the input writer's 1 s slices run
            # beside the job's query: in a pool of their own they take the next free core instead
            # of queueing behind the whole micro-batch (FIFO made the writer fall 80 s behind).
            # Elsewhere one job runs at a time, and FAIR and FIFO schedule it the same.
            "spark.scheduler.mode": "FAIR",
        },
    )
    collector = Collector()
    spark.streams.addListener(collector.listener)

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {text}", flush=True)

    with LocalKafkaBroker(work / "kafka", num_partitions=options.partitions, heap="1g") as broker:
        rows, anchors, latency = measure(spark, collector, broker, work, options, say)
    spark.stop()
    shutil.rmtree(work, ignore_errors=True)  # topics and checkpoints: GBs at the default size
    report(rows, anchors, latency, options)
    return 0


def measure(
    spark, collector: Collector, broker, work: Path, options: Options, say: Any
) -> tuple[list[Row], dict[tuple[str, int], Row], Latency | None]:
    """Produce the topics, warm up, then per application count the anchors and the job's cases, then the
    latency phase."""
    from jobs.config import parse_config

    bootstrap, events, apps_list, cases = broker.bootstrap_servers, options.events, options.apps_list, options.cases
    rows: list[Row] = []
    anchors: dict[tuple[str, int], Row] = {}

    def job_config(case: str, apps: int, topic: str, tag: str = "") -> dict[str, Any]:
        name = f"bench-{case}-{apps}{tag}"
        return {
            "checkpoint_dir": str(work / f"ck-{name}"),
            "trigger": "available_now",
            "streams": [stream_config(name, bootstrap, topic, case, options.max_offsets, options.buckets)],
        }

    topics = {}
    for apps in apps_list:
        topics[apps] = f"bench-in-{apps}"
        broker.create_topic(topics[apps], partitions=options.partitions)
        took = produce(spark, bootstrap, topics[apps], events, apps, options.step_ms)
        say(f"produced {events:,} events for {apps:,} applications into {topics[apps]} in {took:.1f} s")

    # warm-up: JIT, Python workers, state store code paths; not reported
    warm_apps = apps_list[0]
    broker.create_topic("bench-warmup", partitions=options.partitions)
    produce(spark, bootstrap, "bench-warmup", min(events, 20_000), warm_apps, options.step_ms)
    warm = job_config(cases[0], warm_apps, "bench-warmup", "-warmup")
    source = parse_config(warm).streams[0].source
    run_anchor(spark, collector, "native", source, warm_apps, str(work / "ck-warm-native"), "-warmup")
    run_job_case(spark, collector, warm, cases[0], warm_apps, read_state=False)
    say("warm-up done")

    for apps in apps_list:
        source = parse_config(job_config(cases[0], apps, topics[apps])).streams[0].source
        for kind in ANCHORS:
            if not runs_at(options.only_at, apps, kind):
                continue
            row = run_anchor(spark, collector, kind, source, apps, str(work / f"ck-anchor-{kind}-{apps}"))
            anchors[(kind, apps)] = row
            rows.append(row)
            say(f"anchor {kind}, {apps:,} applications: {row.events:,} events, {row.events_s:,.0f} events/s")
        for case in cases:
            if not runs_at(options.only_at, apps, case):
                continue
            row = run_job_case(spark, collector, job_config(case, apps, topics[apps]), case, apps)
            rows.append(row)
            say(
                f"job {case}, {apps:,} applications: {row.events:,} events, {row.events_s:,.0f} events/s, "
                f"{row.results:,} results"
            )

    events_s = {(r.case, r.apps): r.events_s for r in rows}
    latency = None
    if options.latency_s > 0 and ("none", apps_list[0]) in events_s:
        rate = options.latency_rate or max(1, int(events_s[("none", apps_list[0])] / 2))
        say(f"latency phase: {rate:,} events/s for {options.latency_s} s into the none case, "
            f"{apps_list[0]:,} applications")
        latency = latency_phase(
            spark, collector, bootstrap, broker, work, apps_list[0], rate, options.latency_s, options.partitions,
            options.buckets,
        )
    return rows, anchors, latency


def report(rows: list[Row], anchors: dict[tuple[str, int], Row], latency: Latency | None, options: Options) -> None:
    """The machine, the input, the table, the anchors' legend, the cost fits, the latency and the verdict."""
    events_s = {(r.case, r.apps): r.events_s for r in rows}
    print()
    print(machine())
    print(
        f"input: {options.events:,} events per topic, {options.partitions} partitions, maxOffsetsPerTrigger "
        f"{options.max_offsets:,}, shuffle partitions {options.partitions}"
        + (f", buckets {options.buckets}" if options.buckets else "")
    )
    print_table(rows, anchors)
    print(
        "anchors: kafka = Kafka source -> noop; ingest = + validate + repartition by application; "
        f"native = ingest + watermark {WATERMARK} + groupBy(window {WINDOW}, application).avg -> noop. "
        "ratio = job events/s / its anchor's. state B/app: keys + values of the value state "
        "(native: of the aggregation's state) / applications. peak MiB: driver JVM RSS / Python workers PSS."
    )
    for case in options.cases:
        data = [(r.apps, b) for r in rows if r.case == case for b in r.batches if b["rows"] > 0]
        fit = fit_costs(
            [keys_in_batch(a, b["rows"]) for a, b in data],
            [b["rows"] for _, b in data],
            [b["ms"] / 1000 for _, b in data],
        )
        print(f"cost fit, {case}: {fit.describe()} ({fit.batches} batches)")
    if any(c not in EMA_CASES for c in options.cases):
        print(f"\ndetectors against none + EMA (same input, same run), events {options.step_ms / 1000:g} s apart "
              "per app:")
        print(detector_table(rows))
    if latency is not None:
        print(latency.describe() + f"; peak MiB JVM/py {latency.memory}")
    few = options.apps_list[0]
    print(
        summary_line(
            ratio(events_s.get(("avg", few)), events_s.get(("native", few))),
            ratio(events_s.get(("none", few)), events_s.get(("ingest", few))),
            keys_ratio(events_s, [c for c in options.cases if c in EMA_CASES], options.apps_list),
            latency.p99_s if latency is not None else float("nan"),
        )
    )

if __name__ == "__main__":
    sys.exit(main())
