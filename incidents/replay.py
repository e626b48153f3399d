"""Incidents of one scored series, offline: the job's state machine over a backtest's results.

:func:`series_incidents` feeds a series' scores (a detector's
:class:`~detectors.base.BatchResult`) through :func:`incidents.machine.process`
in chunks, with the state encoded and decoded between chunks as the job does
between micro-batches, and returns the transitions. The backtest
(tools/backtest.py ``--incidents``) and bench/incident_quality.py use it, so
incident quality is measured with the code that runs in the job.

>>> import numpy as np
>>> from detectors.base import BatchResult
>>> from incidents.rules import parse_settings
>>> flags = np.array([False, True, False, False, False])
>>> result = BatchResult(np.zeros(5), np.ones(5), np.where(flags, 0.9999, 0.5), flags)
>>> records = series_incidents("s", "d", np.arange(5) * 60_000, np.arange(5.0), result,
...                            parse_settings({"resolve_after": 2}))
>>> [(r["transition"], r["event_ts"]) for r in records]
[('opened', '1970-01-01T00:01:00.000Z'), ('resolved', '1970-01-01T00:03:00.000Z')]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from detectors.base import BatchResult
from incidents.machine import IncidentState, Scored, StreamKey, process
from incidents.rules import IncidentSettings


def cadence_ms(ts_ms: np.ndarray) -> int:
    """The series' typical step (median of the positive gaps), the window length its rules default from."""
    gaps = np.diff(np.asarray(ts_ms, dtype=np.int64))
    gaps = gaps[gaps > 0]
    return int(np.median(gaps)) if len(gaps) else 60_000


def series_incidents(
    application: str,
    detector: str,
    ts_ms: np.ndarray,
    values: np.ndarray,
    result: BatchResult,
    settings: IncidentSettings | None = None,
    window_ms: int | None = None,
    chunk: int = 1000,
) -> list[dict[str, Any]]:
    """Every incident transition of the series (records as on the job's incidents topic)."""
    settings = settings or IncidentSettings()
    window = window_ms or cadence_ms(ts_ms)
    key = StreamKey("none", window)
    blob = IncidentState.for_settings(settings).encode()
    n = len(ts_ms)
    explanation = np.asarray(result.explanation, dtype=object)
    records: list[dict[str, Any]] = []
    for a in range(0, n, max(chunk, 1)):
        b = min(n, a + max(chunk, 1))
        state = IncidentState.decode(blob)
        scored = Scored(
            [application], [detector], np.zeros(b - a, dtype=np.int64), np.zeros(b - a, dtype=np.int64),
            np.asarray(ts_ms[a:b], dtype=np.int64), np.asarray(values[a:b], dtype=np.float64),
            np.asarray(result.value_lower_limit[a:b], dtype=np.float64),
            np.asarray(result.value_upper_limit[a:b], dtype=np.float64),
            np.asarray(result.anomaly_probability[a:b], dtype=np.float64),
            np.asarray(result.is_anomaly[a:b], dtype=bool), explanation[a:b],
        )
        # the watermark a job would have after this chunk: its last point
        records += process(state, settings, key, scored, int(ts_ms[b - 1])).records
        blob = state.encode()
    return records
