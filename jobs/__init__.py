"""The streaming query, and only it: what spark-submit.sh ships to the executors.

One module per stage, data flowing one way (assembled in jobs/query.py): source (read,
validate, watermark) -> packing -> stateful_operator over stateful_step and windows ->
sinks and jdbc. The tools around the query live in ``tools``, NAB scoring in ``evaluation``.
"""

import sys as _sys

# Spark runs transformWithStateInPandas' init stage in a Python process of its own
# whose module prints its progress, the UDF's whole schema included, with print()
# into the job's log. Our processor is unpickled there (which imports this package),
# so from then on that module's print is silenced; the job logs its own lines.
_main = _sys.modules.get("__main__")
if getattr(getattr(_main, "__spec__", None), "name", "") == "pyspark.sql.streaming.transform_with_state_driver_worker":
    _main.print = lambda *args, **kwargs: None  # type: ignore[union-attr]
