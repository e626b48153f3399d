"""The sink's per-batch counts: observed while the batch is written, every dead-letter reason named."""

from __future__ import annotations

import ast
from pathlib import Path

from jobs.progress import format_progress
from jobs.result_format import DEAD_LETTER_REASONS
from jobs.sinks import STATS_METRICS, BatchStats, StatsBoard

JOBS = Path(__file__).resolve().parent.parent / "jobs"


def _reason_codes_in_source() -> set[str]:
    """The codes jobs/source.py's checks produce: the string second in each (condition, code, detail)."""
    codes = set()
    for node in ast.walk(ast.parse((JOBS / "source.py").read_text())):
        if isinstance(node, ast.Tuple) and len(node.elts) == 3 and isinstance(node.elts[2], ast.Call):
            code = node.elts[1]
            if isinstance(code, ast.Constant) and isinstance(code.value, str):
                codes.add(code.value)
    return codes


def _reason_codes_in_operator() -> set[str]:
    """The codes jobs/stateful_step.py gives its dead letters: _refused(...)'s reason, the detector error."""
    tree = ast.parse((JOBS / "stateful_step.py").read_text())
    codes = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_refused":
            codes.update(a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str))
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "reason" and isinstance(value, ast.Call):
                    codes.update(
                        e.value
                        for a in value.args
                        if isinstance(a, ast.List)
                        for e in a.elts
                        if isinstance(e, ast.Constant)
                    )
    return codes


def test_every_reason_the_job_gives_is_counted_by_name():
    source, operator = _reason_codes_in_source(), _reason_codes_in_operator()
    # the scans find what they look for (a scan that found nothing would pass vacuously)
    assert {"invalid_json", "ts_out_of_range", "wrong_type"} <= source
    assert {"late", "duplicate", "conflicting_value", "detector_error"} <= operator
    assert (source | operator | {"unknown"}) == set(DEAD_LETTER_REASONS)


def test_counts_come_from_the_observed_metrics_and_an_unlisted_reason_is_not_hidden():
    by_reason = {r: 0 for r in DEAD_LETTER_REASONS} | {"late": 1, "invalid_json": 1}
    metrics = {"results": 1200, "anomalies": 3, "dead_letters": 4, "by_reason": by_reason}
    stats = BatchStats.of_metrics(metrics)
    assert (stats.results, stats.anomalies, stats.dead_letters) == (1200, 3, 4)
    assert stats.by_reason == {"late": 1, "invalid_json": 1, "other": 2}

    board = StatsBoard()
    board.put("web", 12, {"kafka": 1.5, "jdbc": 0.25})
    progress = {
        "name": "web",
        "batchId": 12,
        "numInputRows": 48_000,
        "processedRowsPerSecond": 9612.0,
        "durationMs": {"triggerExecution": 1840},
        "observedMetrics": {STATS_METRICS: metrics},
    }
    line = format_progress(progress, board)
    assert line == (
        "[web] batch 12: 48,000 in (9,612/s), 1,200 results, 3 anomalies, "
        "4 dead letters (invalid_json 1, late 1, other 2), 1.84 s (kafka 1.50, jdbc 0.25)"
    )
    # a batch without observed metrics (the query did not run the sink) has no counts, not zeros
    assert format_progress({**progress, "observedMetrics": {}}, board) == "[web] batch 12: 48,000 in (9,612/s), 1.84 s"
