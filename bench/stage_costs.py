"""Where the streaming job's time goes, stage by stage, against the same anchors, in one run.

    .venv/bin/python bench/stage_costs.py               # 1M events, 1,000 applications, both cases
    .venv/bin/python bench/stage_costs.py --events 400000 --cases none

``bench/throughput.py`` says how far the job is from its anchors; this says
why. On one topic (produced as there: round-robin over ``--apps``
applications, event-time order) it runs, each as its own ``availableNow``
query with the job's ``maxOffsetsPerTrigger`` and all in one SparkSession,
queries that add one stage of the job at a time:

=========  ===================================================================
ingest     read + validate + ``repartition`` by application -> noop (anchor b)
native     ingest + watermark + Spark's ``groupBy(window, application).avg`` -> noop (anchor c)
pack       read + validate + watermark + pack (jobs/packing.py) + shuffle by bucket -> noop
carry      pack + ``transformWithStateInPandas`` whose processor only unpacks the events:
           no state, no detector, no output -- the least it costs to get every event into Python
step       carry + the job's step (state, windows, detectors), output dropped in Python
operator   the job's operator, output -> noop (no sink)
job        the job itself (``jobs.main.run``: operator + Kafka sink)
=========  ===================================================================

For each: µs per input event over all batches, and over the *steady* batches
(data batches after the first: the first pays the query's start -- Python
driver worker, state stores -- and the last, empty, batch only moves the
watermark), and the ratio anchor / variant: the ratio the job would have if
everything after that stage were free. So ``carry``'s ratio to ``native`` is
the ceiling of ``avg/native`` for any job that hands every event to a Python
stateful operator, whatever its detectors and sinks cost.

Each variant runs ``--reps`` times (default 2) in turn, round after round; the
table shows the last round (the first also warms the JVM and the workers) and
the spread over the rounds after the first. Not run in CI.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput as tb

from jobs.packing import pack, unpack
from jobs.stateful_operator import OUTPUT_SCHEMA, BucketProcessor

VARIANTS = ("ingest", "native", "pack", "carry", "step", "operator", "job")
ANCHOR_OF = {"avg": "native", "none": "ingest"}


class CarryProcessor(BucketProcessor):
    """Unpacks a bucket's events into numpy and drops them: what any Python operator must pay."""

    def handleInputRows(self, key: Any, rows: Iterator[pd.DataFrame], timerValues: Any) -> Iterator[pd.DataFrame]:
        frames = list(rows)
        unpack(frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True))
        return iter(())

    def handleExpiredTimer(self, key: Any, timerValues: Any, expiredTimerInfo: Any) -> Iterator[pd.DataFrame]:
        return iter(())


class StepProcessor(BucketProcessor):
    """The job's processor with its output dropped in Python (nothing goes back to the JVM)."""

    def _step(self, events: dict, watermark_ms: int, fired: bool = False) -> Iterator[pd.DataFrame]:
        for _ in super()._step(events, watermark_ms, fired):
            pass
        return iter(())


PROCESSORS = {"carry": CarryProcessor, "step": StepProcessor, "operator": BucketProcessor}


def variant_frame(spark: Any, variant: str, stream: Any) -> Any:
    """The streaming frame of a noop variant."""
    from jobs.source import parse_messages, read_kafka, with_watermark

    if variant in ("ingest", "native"):
        return tb.anchor_frame(spark, variant, stream.source)
    events = with_watermark(
        parse_messages(read_kafka(spark, stream.source), stream.source), stream.aggregation.allowed_lateness_millis
    )
    packed = pack(events, stream.buckets)
    if variant == "pack":
        return packed.repartition("bucket")
    return packed.groupBy("bucket").transformWithStateInPandas(
        PROCESSORS[variant](stream), OUTPUT_SCHEMA, "Append", "EventTime"
    )


def per_event_us(batches: list[dict], steady: bool) -> float:
    """µs per input event over the batches (steady: data batches after the first)."""
    data = [b for b in batches if b["rows"] > 0]
    chosen = data[1:] if steady else batches
    events = sum(b["rows"] for b in chosen)
    return sum(b["ms"] for b in chosen) * 1000.0 / events if events else float("nan")


def run_rounds(
    spark, collector: tb.Collector, bootstrap: str, work: Path, cases: list[str], reps: int, max_offsets: int,
    say: Callable[[str], None],
) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """Every variant of every case, ``reps`` rounds in turn; (case, variant) -> per round:
    (µs/event over all batches, µs/event over the steady ones)."""
    from jobs.config import parse_config
    from jobs.main import run

    figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for round_no in range(reps):
        for case in cases:
            for variant in VARIANTS:
                if (variant == "native" and case != "avg") or (variant == "ingest" and case != "none"):
                    continue  # each case against its own anchor
                name = f"{case}-{variant}-{round_no}"
                config = parse_config(
                    {
                        "checkpoint_dir": str(work / f"ck-{name}"),
                        "trigger": "available_now",
                        "streams": [tb.stream_config(name, bootstrap, "stages-in", case, max_offsets, None)],
                    }
                )
                if variant == "job":
                    if run(config, spark=spark) != 0:
                        raise SystemExit(f"the job failed ({name})")
                else:
                    query = (
                        variant_frame(spark, variant, config.streams[0])
                        .writeStream.format("noop")
                        .queryName(name)
                        .option("checkpointLocation", str(work / f"ck-{name}"))
                        .trigger(availableNow=True)
                        .start()
                    )
                    query.awaitTermination()
                batches = collector.of(name)
                row = (per_event_us(batches, steady=False), per_event_us(batches, steady=True))
                figures.setdefault((case, variant), []).append(row)
                say(f"{name}: {row[0]:.2f} us/event, steady {row[1]:.2f}")
    return figures


def print_table(figures: dict[tuple[str, str], list[tuple[float, float]]], cases: list[str], args: Any) -> None:
    print()
    print(tb.machine())
    print(
        f"input: {args.events:,} events, {args.apps:,} applications, {args.partitions} partitions, "
        f"maxOffsetsPerTrigger {args.max_offsets:,}; last of {args.reps} rounds"
    )
    print("| case | stage    | us/event | steady us/event | spread (rounds 2+) | anchor/stage | steady anchor/stage |")
    print("|------|----------|----------|-----------------|--------------------|--------------|---------------------|")
    for case in cases:
        anchor = figures[(case, ANCHOR_OF[case])][-1]
        for variant in VARIANTS:
            if (case, variant) not in figures:
                continue
            rounds = figures[(case, variant)]
            last = rounds[-1]
            later = [r[0] for r in rounds[1:]] or [last[0]]
            spread = f"{min(later):.2f}-{max(later):.2f}"
            print(
                f"| {case} | {variant:8s} | {last[0]:8.2f} | {last[1]:15.2f} | {spread:>18s} | "
                f"{anchor[0] / last[0]:12.2f} | {anchor[1] / last[1]:19.2f} |"
            )
    print(
        "anchor/stage: the anchor's us/event over the stage's (ingest for none, native for avg): the job's "
        "ratio if everything after that stage cost nothing. steady: data batches after each query's first."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--apps", type=int, default=1000)
    parser.add_argument("--max-offsets", type=int, default=250_000, help="maxOffsetsPerTrigger")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--cases", default="none,avg", help="comma list of none,avg")
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    if not set(cases) <= set(tb.CASES) or args.reps < 1:
        parser.error(f"--cases: from {', '.join(tb.CASES)}; --reps >= 1")

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "py4j"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from tools.local_kafka import LocalKafkaBroker

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="anomaly-stages-"))
    spark = tb.bench_session("anomaly-stages", args.partitions)
    collector = tb.Collector()
    spark.streams.addListener(collector.listener)

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {text}", flush=True)

    with LocalKafkaBroker(work / "kafka", num_partitions=args.partitions, heap="1g") as broker:
        bootstrap = broker.bootstrap_servers
        broker.create_topic("stages-in", partitions=args.partitions)
        took = tb.produce(spark, bootstrap, "stages-in", args.events, args.apps)
        say(f"produced {args.events:,} events for {args.apps:,} applications in {took:.1f} s")
        figures = run_rounds(spark, collector, bootstrap, work, cases, args.reps, args.max_offsets, say)
    spark.stop()
    shutil.rmtree(work, ignore_errors=True)
    print_table(figures, cases, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
