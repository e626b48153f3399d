"""A minimal plugin detector: z-score against the running mean/std of all past points.

Everything a plugin needs: subclass :class:`detectors.base.Detector`, declare
``name``, ``params`` and ``state_version``, implement ``_update``, ``_get_state``
and ``_set_state``, and declare an entry point in the group
``streaming_anomaly.detectors`` (see this package's setup.py).

>>> det = ZScoreDetector(z=3.0, warmup=3)
>>> [det.update(t, v).is_anomaly for t, v in enumerate([1.0, 2.0, 1.0, 2.0, 1.5, 50.0])]
[False, False, False, False, False, True]

Its test (``tests/plugin_example/test_zscore_example.py``) runs the host project's
contract suite on it: ``detectors.checks.check_detector(ZScoreDetector)``.

State: three numbers (Welford's count / mean / sum of squared deviations), so it
is tiny and constant in size.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from detectors.base import AnomalyResult, Detector, StateError
from detectors.params import Param, ParamSchema

_BELOW_ONE = math.nextafter(1.0, 0.0)


class ZScoreDetector(Detector):
    """Flags points more than ``z`` running standard deviations from the running mean."""

    name: ClassVar[str] = "zscore_example"
    state_version: ClassVar[int] = 1
    params: ClassVar[ParamSchema] = ParamSchema(
        (
            Param(
                "z",
                float,
                3.0,
                "distance from the mean, in standard deviations",
                minimum=0.0,
                exclusive_minimum=True,
            ),
            Param("warmup", int, 10, "points learned before the first scored point", minimum=2),
        )
    )

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._n, self._mean, self._m2 = 0, 0.0, 0.0

    def _update(self, ts_ms: int, value: float) -> AnomalyResult:
        # Score first, learn afterwards: the point is not part of its own prediction.
        if self._n < self.config["warmup"]:
            result = AnomalyResult.warming_up()
        else:
            # A tiny floor so a constant history does not divide by zero.
            std = max(math.sqrt(self._m2 / (self._n - 1)), 1e-12)
            z = abs(value - self._mean) / std
            half = self.config["z"] * std
            # erf rounds to 1.0 beyond ~8.3 sigma; the contract is [0, 1) (detectors.checks)
            prob = min(math.erf(z / math.sqrt(2.0)), _BELOW_ONE)
            result = AnomalyResult(self._mean - half, self._mean + half, prob, z > self.config["z"])
        # Welford's update: numerically stable running mean / variance.
        self._n += 1
        delta = value - self._mean
        self._mean += delta / self._n
        self._m2 += delta * (value - self._mean)
        return result

    def _get_state(self) -> dict[str, Any]:
        return {"n": self._n, "mean": self._mean, "m2": self._m2}

    def _set_state(self, state: dict[str, Any], version: int) -> None:
        try:
            self._n, self._mean, self._m2 = int(state["n"]), float(state["mean"]), float(state["m2"])
        except KeyError as err:
            raise StateError(f"{self.name}: stored state lacks field {err}") from None
