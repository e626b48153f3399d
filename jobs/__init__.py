"""The Spark job's packages (see README.md)."""

import sys as _sys

# Spark runs transformWithStateInPandas' init stage in a Python process of its own
# whose module prints its progress, the UDF's whole schema included, with print()
# into the job's log. Our processor is unpickled there (which imports this package),
# so from then on that module's print is silenced; the job logs its own lines.
_main = _sys.modules.get("__main__")
if getattr(getattr(_main, "__spec__", None), "name", "") == "pyspark.sql.streaming.transform_with_state_driver_worker":
    vars(_main)["print"] = lambda *args, **kwargs: None
