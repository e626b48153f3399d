"""Streaming anomaly detectors: pure Python + numpy, no Spark.

>>> from detectors import build_detector
>>> det = build_detector("ema", {"window": 20})
>>> results = [det.update(ts * 1000, 10.0 + (ts % 3)) for ts in range(100)]
>>> results[-1].is_anomaly, det.update(100_000, 1000.0).is_anomaly
(False, True)
"""

from detectors.base import AnomalyResult, BatchResult, Detector, NonFiniteValueError, StateError
from detectors.params import Param, ParamError, ParamSchema
from detectors.registry import (
    available_detectors,
    build_detector,
    detector_from_state,
    get_detector_class,
    register,
)

__all__ = [
    "AnomalyResult",
    "BatchResult",
    "Detector",
    "NonFiniteValueError",
    "Param",
    "ParamError",
    "ParamSchema",
    "StateError",
    "available_detectors",
    "build_detector",
    "detector_from_state",
    "get_detector_class",
    "register",
]
