"""Event-time windows: what a window is, for every aggregation function.

The stateful step (jobs/stateful_step.py) windows the events of all the
applications of a bucket at once, over these definitions. Windowing lives
inside the operator, rather than in Spark's own window aggregation, because
Spark drops events behind the watermark and only counts them; here every late
event goes to the dead-letter topic with reason ``late``.

Semantics:

* Tumbling windows ``[start, start + agg_window_millis)``, aligned to the epoch.
  For ``none`` every event is its own point, a window of one millisecond.
* A window is *closed* (aggregated, scored, emitted) once the watermark reaches
  its end. The step closes windows at the batch's watermark *before* adding
  the batch's events, and remembers that watermark per application: an event
  whose window ends at or before it is *late* -- the same rule as Spark's own
  (an event older than the watermark), applied per window. Adding it would
  change a scored window and feed the detectors out of event-time order.
* Windows with no events produce no point (``count`` never emits 0).
* Duplicates (with ``deduplicate`` on): an event with the same ts and value
  as one already counted in a still-open window of the application, or earlier
  in the same batch, is dead-lettered as a duplicate instead of being counted
  twice. A duplicate that arrives after its window closed is late, like any
  event of that window.
* What an open window keeps (raw values or partial aggregates) and how it is
  closed into one value is the aggregation function's (jobs/aggregations.py).

>>> window_starts(np.array([1_000, 9_999, 10_000]), "avg", 10_000).tolist()
[0, 0, 10000]
>>> window_length("none", 10_000), window_length("avg", 10_000)
(1, 10000)
"""

from __future__ import annotations

import numpy as np


def window_starts(ts: np.ndarray, agg_function: str, window_ms: int) -> np.ndarray:
    if agg_function == "none":
        return ts.astype(np.int64, copy=False)
    return ts - np.mod(ts, window_ms)


def window_length(agg_function: str, window_ms: int) -> int:
    return 1 if agg_function == "none" else window_ms
