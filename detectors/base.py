"""The detector contract shared by every detector, the Spark job and the backtest.

A detector is a plain Python object built from validated parameters. It sees one
series (one application) in time order:

* ``update(ts_ms, value) -> AnomalyResult`` scores one point, then learns from it
  (a point never takes part in its own prediction);
* ``update_batch(ts_ms, values) -> BatchResult`` does the same for arrays and
  gives exactly the results of calling ``update`` point by point;
* ``to_state() -> bytes`` / ``Detector.from_state(blob, params)`` round-trip
  everything the detector has learned. This is what the Spark stateful operator
  keeps per key, so it is compact, versioned and bounded in size (the blob
  format: detectors/state.py).
* optional, for speed: ``Detector.update_many(states, ts_ms, values, offsets,
  **params) -> (new states, BatchResult)`` scores many series at once (the
  streaming job calls it with every application of a bucket that has closed
  windows). It must give, bit for bit, what restoring each series from its
  state, ``update_batch`` and ``to_state`` give, and raise (changing nothing)
  if any series fails; the job then goes back to one series at a time to
  isolate the failing points. The default here is that loop; a detector may
  override it with a vectorised path across series.

Subclasses set ``name``, ``params`` (a :class:`~detectors.params.ParamSchema`)
and ``state_version``, and implement ``_update``, ``_get_state`` and
``_set_state``. Everything else is here.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from detectors.params import ParamSchema
from detectors.state import StateError, pack_state, params_fingerprint, unpack_state

__all__ = [
    "DEFAULT_MAX_STATE_BYTES",
    "AnomalyResult",
    "BatchResult",
    "Detector",
    "NonFiniteValueError",
    "StateError",
    "concat_results",
]


@dataclass(frozen=True, slots=True)
class AnomalyResult:
    """What a detector says about one point.

    ``value_lower_limit``/``value_upper_limit`` are the band the detector expected
    the value to fall in; both are ``None`` while the detector is warming up or
    when the method has no bounds (the detector's docstring says which).
    ``anomaly_probability`` is in [0, 1]; ``is_anomaly`` is the thresholded call.
    """

    value_lower_limit: float | None
    value_upper_limit: float | None
    anomaly_probability: float
    is_anomaly: bool
    explanation: str | None = None  # compact JSON reason of an anomaly (detectors.explain), else None

    @staticmethod
    def warming_up() -> AnomalyResult:
        """The explicit 'not enough history yet' result: no bounds, no alarm."""
        return AnomalyResult(None, None, 0.0, False)


@dataclass(frozen=True, init=False)
class BatchResult:
    """Column form of many AnomalyResults; NaN stands for a missing bound.

    ``explanation`` is an object array of ``str | None`` (one per point); left out,
    it is all ``None``.
    """

    value_lower_limit: np.ndarray
    value_upper_limit: np.ndarray
    anomaly_probability: np.ndarray
    is_anomaly: np.ndarray
    explanation: np.ndarray

    def __init__(self, value_lower_limit: np.ndarray, value_upper_limit: np.ndarray,
                 anomaly_probability: np.ndarray, is_anomaly: np.ndarray,
                 explanation: np.ndarray | None = None) -> None:
        if explanation is None:
            explanation = np.full(len(anomaly_probability), None, dtype=object)
        for name, column in (("value_lower_limit", value_lower_limit), ("value_upper_limit", value_upper_limit),
                             ("anomaly_probability", anomaly_probability), ("is_anomaly", is_anomaly),
                             ("explanation", explanation)):
            object.__setattr__(self, name, column)  # frozen

    def __len__(self) -> int:
        return len(self.anomaly_probability)

    def result(self, i: int) -> AnomalyResult:
        lo, hi = float(self.value_lower_limit[i]), float(self.value_upper_limit[i])
        return AnomalyResult(
            None if math.isnan(lo) else lo,
            None if math.isnan(hi) else hi,
            float(self.anomaly_probability[i]),
            bool(self.is_anomaly[i]),
            self.explanation[i],
        )

    @staticmethod
    def from_results(results: list[AnomalyResult]) -> BatchResult:
        n = len(results)
        lo, hi = np.full(n, np.nan), np.full(n, np.nan)
        prob, flag = np.zeros(n), np.zeros(n, dtype=bool)
        why = np.full(n, None, dtype=object)
        for i, r in enumerate(results):
            if r.value_lower_limit is not None:
                lo[i] = r.value_lower_limit
            if r.value_upper_limit is not None:
                hi[i] = r.value_upper_limit
            prob[i], flag[i] = r.anomaly_probability, r.is_anomaly
            if r.explanation is not None:
                why[i] = r.explanation
        return BatchResult(lo, hi, prob, flag, why)


DEFAULT_MAX_STATE_BYTES = 1 << 20
"""The state bound of a detector that declares none (1 MiB: generous for one key's state)."""


def concat_results(results: list[BatchResult]) -> BatchResult:
    """One BatchResult of many, in order."""
    if len(results) == 1:
        return results[0]
    if not results:
        return BatchResult(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0, dtype=bool))
    return BatchResult(
        np.concatenate([r.value_lower_limit for r in results]),
        np.concatenate([r.value_upper_limit for r in results]),
        np.concatenate([r.anomaly_probability for r in results]),
        np.concatenate([np.asarray(r.is_anomaly, dtype=bool) for r in results]),
        np.concatenate([np.asarray(r.explanation, dtype=object) for r in results]),
    )


def _update_many_loop(
    cls: Any, states: list[bytes | None], ts_ms: np.ndarray, values: np.ndarray, offsets: np.ndarray,
    params: Mapping[str, Any],
) -> tuple[list[bytes], BatchResult]:
    new_states, results = [], []
    bounds = np.asarray(offsets).tolist()
    for k, blob in enumerate(states):
        a, b = bounds[k], bounds[k + 1]
        detector = cls(**params) if blob is None else cls.from_state(blob, **params)
        results.append(detector.update_batch(ts_ms[a:b], values[a:b]))
        new_states.append(detector.to_state())
    return new_states, concat_results(results)


class NonFiniteValueError(ValueError):
    """Detectors take finite floats only; NaN and infinities are rejected up front."""


_D = TypeVar("_D", bound="Detector")


class Detector(ABC):
    """Base class of all detectors; see the module docstring for the contract."""

    name: ClassVar[str]
    params: ClassVar[ParamSchema]
    state_version: ClassVar[int] = 1
    # True when anomaly_probability can be exactly 1.0; the contract is [0, 1), which keeps
    # the strongest alarms rankable, and only a detector bound to a reference's scores (CAD)
    # declares this (detectors.checks then checks [0, 1]).
    probability_reaches_one: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        self.config: dict[str, Any] = self.params.validate(params)

    # -- scoring ---------------------------------------------------------------
    def update(self, ts_ms: int, value: float) -> AnomalyResult:
        """Score ``value`` observed at ``ts_ms`` (epoch milliseconds), then learn it."""
        value = float(value)
        if not math.isfinite(value):
            raise NonFiniteValueError(f"{self.name}: value must be finite, got {value!r}")
        return self._update(int(ts_ms), value)

    def update_batch(self, ts_ms: np.ndarray, values: np.ndarray) -> BatchResult:
        """Score many points in time order; identical to calling ``update`` on each.

        Detectors with a vectorised path override this; the default loops.
        """
        values = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise NonFiniteValueError(f"{self.name}: values must be finite")
        ts = np.asarray(ts_ms, dtype=np.int64)
        return BatchResult.from_results(
            [self._update(int(t), float(v)) for t, v in zip(ts, values, strict=True)]
        )

    @classmethod
    def update_many(
        cls, states: list[bytes | None], ts_ms: np.ndarray, values: np.ndarray, offsets: np.ndarray, **params: Any
    ) -> tuple[list[bytes], BatchResult]:
        """Many series at once: series ``k`` has state ``states[k]`` (None: a fresh detector) and the
        points ``offsets[k]:offsets[k + 1]`` of ``ts_ms``/``values``.

        Returns each series' new state and the results of all points (in the
        order of ``values``): exactly what ``from_state`` + ``update_batch`` +
        ``to_state`` give per series. Raises if any series fails. The default
        loops; subclasses may override it with a path vectorised across series.
        """
        return _update_many_loop(cls, states, ts_ms, values, offsets, params)

    @abstractmethod
    def _update(self, ts_ms: int, value: float) -> AnomalyResult: ...

    # -- state -----------------------------------------------------------------
    @abstractmethod
    def _get_state(self) -> dict[str, Any]:
        """Everything learned so far, as a dict of numbers, strings and numpy arrays."""

    @abstractmethod
    def _set_state(self, state: dict[str, Any], version: int) -> None:
        """Restore what ``_get_state`` returned (possibly written by an older ``version``)."""

    def max_state_bytes(self) -> int | None:
        """The most bytes ``to_state()`` takes with these parameters, however long the stream;
        None: no bound declared, and then the state must stay within DEFAULT_MAX_STATE_BYTES
        and level off (both checked by :func:`detectors.checks.check_bounded_state`)."""
        return None

    def to_state(self) -> bytes:
        """Serialise the learned state, tagged with detector name, version and parameters."""
        return pack_state(self.name, self.state_version, self.config, self._get_state())

    @classmethod
    def from_state(cls: type[_D], blob: bytes, **params: Any) -> _D:
        """Rebuild a detector from ``params`` and a blob written by ``to_state``.

        Raises :class:`StateError` when the blob belongs to another detector, to an
        unknown state version, or to different parameters: resuming with changed
        parameters would silently mix two models.
        """
        detector = cls(**params)
        header, fields = unpack_state(blob, f"detector {cls.name!r}")
        if header["name"] != cls.name:
            raise StateError(f"stored state is for detector {header['name']!r}, not {cls.name!r}")
        if header["version"] > cls.state_version:
            raise StateError(
                f"{cls.name}: stored state has version {header['version']}, this code "
                f"reads up to {cls.state_version}; upgrade the code or start a new checkpoint"
            )
        if header["params"] != params_fingerprint(detector.config):
            raise StateError(
                f"{cls.name}: stored state was built with other parameters than "
                f"{detector.config}; start from a new checkpoint to change parameters"
            )
        detector._set_state(fields, header["version"])
        return detector
