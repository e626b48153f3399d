"""Anomaly likelihood (``"likelihood"``): how unusual is the *recent stream of scores*?

Written from the published description (Ahmad, Lavin, Purdy, Agha, 2017,
"Unsupervised real-time anomaly detection for streaming data", Neurocomputing
262, section 4.2): keep a window of past raw anomaly scores, model the
distribution of their short-term moving average as a normal ``N(mu, sigma)``,
and report ``L = 1 - Q((mean of the last W' scores - mu) / sigma)`` where ``Q``
is the standard normal tail. A log-scaled variant,
``log(1.0000000001 - L) / log(1 - 0.9999999999)``, spreads the interesting
region near ``L = 1`` over ``[0, 1]`` (0.5 there is ``L ~ 0.99999``).

Graded top end (a deviation from the paper's formulas, in float64 terms only):
computed literally, ``L`` rounds to exactly 1.0 once ``Q < 1.1e-16`` (z > 8.2) and
the log scale then saturates at 1.0 too, so the strongest alarms all tie. Here the
tail ``Q`` is never formed as ``1 - L``: it is computed directly, and below a floor
replaced by the graded tail ``floor / (1 + ln(1 + ln(floor / Q)))`` of
:func:`detectors._stats.graded_tail` (continuous, strictly decreasing in ``z``,
never 0). So

* plain: ``L = 1 - graded(Q)`` with floor ``1e-9``: exactly the paper's ``L`` up to
  ``1 - 1e-9``, graded and ``< 1`` beyond;
* log scale: ``1 - log1p(graded(Q) / e) / ln(1 / e)`` with ``e = 1.0000000001 - 1``
  (the same value as the paper's formula, written so that small tails keep their
  digits) and floor ``1e-18``: exactly the paper's value up to ``1 - 4.3e-10``,
  graded and ``< 1`` beyond.

Both are monotone in the same ``z``; thresholds keep their meaning wherever the
paper's scale was representable.

The core is plain data and pure functions, so it is easy to test and to keep
in any state store:

>>> from detectors.likelihood import LikelihoodParams, likelihood_update, new_likelihood_state
>>> state = new_likelihood_state(LikelihoodParams(learning_period=5, estimation_samples=20,
...                                               historic_window_size=100, averaging_window=5))
>>> for i in range(40):
...     state, lik = likelihood_update(state, 0.1 + 0.01 * (i % 5))
>>> round(lik, 2)                         # a normal stretch: close to the median
0.5
>>> for _ in range(4):
...     state, lik = likelihood_update(state, 1.0)
>>> 0.9999 < lik < 1.0
True

:class:`LikelihoodDetector` composes it with any registered detector: the base
detector scores the values, the likelihood of its ``anomaly_probability``
stream replaces that probability, and the base's bounds are passed through:

>>> from detectors import build_detector
>>> det = build_detector("likelihood", {"base": "ema", "base_params": {"window": 20},
...                                     "learning_period": 20, "estimation_samples": 30})
>>> import math
>>> results = [det.update(i, math.sin(i / 3)) for i in range(200)]
>>> results[10].value_upper_limit is None, results[-1].value_upper_limit is not None
(True, True)
>>> any(r.is_anomaly for r in results[60:])
False
>>> results = [det.update(200 + i, 50.0 + math.sin(i / 3)) for i in range(10)]
>>> any(r.is_anomaly for r in results)
True

Details and choices (where the paper leaves them open)
------------------------------------------------------
* Raw scores must lie in ``[0, 1]`` (the base's ``anomaly_probability``).
* The first ``learning_period`` scores only fill the history (the base detector
  is typically still warming up and reports zeros); after another
  ``estimation_samples`` scores the distribution is fitted on the
  ``averaging_window``-point moving averages of the scores after the learning
  period (at most the last ``historic_window_size`` ones), and re-fitted every
  ``reestimation_period`` scores. Before the first fit the likelihood is 0.5
  and the detector returns :meth:`AnomalyResult.warming_up`.
* No self-leak: a score is judged against the fit made *before* it; it joins
  the history (and the next re-fit) afterwards. The short-term average does
  include it: that average is the quantity being judged.
* ``sigma`` is floored at ``MIN_STD = 0.01`` (1% of the score range): a perfectly
  flat score history (e.g. a constant series, all base probabilities 0) would
  otherwise make the first tiny score infinitely unlikely.
* Because the judged quantity is a ``averaging_window``-point average, the
  likelihood reacts to *sustained* changes of the base's scores (several
  unusual points within ``averaging_window``), not to an isolated spike; that
  is the method's purpose. With the EMA/robust bases, whose probabilities are
  roughly uniform on normal data, one spike moves the average by at most
  ``1/averaging_window``.
* ``threshold`` applies to the reported ``anomaly_probability``: with the default
  ``log_scale=True`` the default 0.5 means ``L >= ~0.99999``; with
  ``log_scale=False`` set it on the plain likelihood scale (e.g. 0.99999). As the
  reported value is always below 1.0, ``threshold = 1.0`` means "never".
* State: the base detector's own blob (bytes) + the score ring buffer
  (``historic_window_size`` float64: 69 KB at the default 8640) + 4 numbers;
  constant size over the stream's life.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from detectors._stats import EXACT_TAIL, SQRT2, graded_tail
from detectors.base import DEFAULT_MAX_STATE_BYTES, AnomalyResult, BatchResult, Detector, StateError
from detectors.explain import explanation
from detectors.params import Param, ParamError, ParamSchema

MIN_STD = 0.01
_LOG_OFFSET = 1.0000000001
_LOG_EPS = _LOG_OFFSET - 1.0  # == 1 - 0.9999999999 in float64 (1.00000008274e-10)
_LOG_NORM = -math.log(_LOG_EPS)
LOG_SCALE_EXACT_TAIL = 1e-18
"""Below this tail the log scale is graded (the paper's value is ``1 - 4.3e-10`` there)."""


# -- pure core ---------------------------------------------------------------------
ESTIMATOR_PARAMS = ParamSchema(
    (
        Param("learning_period", int, 288, "scores that only fill the history", minimum=0),
        Param("estimation_samples", int, 100, "scores after the learning period before the first fit", minimum=2),
        Param("historic_window_size", int, 8640, "raw scores kept for fitting (ring buffer)", minimum=2),
        Param("reestimation_period", int, 100, "re-fit the distribution every this many scores", minimum=1),
        Param("averaging_window", int, 10, "points in the short-term moving average of scores", minimum=1),
    )
)
"""The estimator's parameters (defaults follow the paper's setup: a day of 5-minute points
to learn, a month of history); also part of :class:`LikelihoodDetector`'s schema."""


@dataclass(frozen=True, init=False)
class LikelihoodParams:
    """Validated parameters of the likelihood estimator: the fields of :data:`ESTIMATOR_PARAMS`
    as attributes, checked by that schema and against each other.

    >>> p = LikelihoodParams(averaging_window=5)
    >>> p.averaging_window, p.learning_period
    (5, 288)
    >>> LikelihoodParams(averaging_window=0)
    Traceback (most recent call last):
    ...
    detectors.params.ParamError: averaging_window: must be >= 1, got 0
    """

    items: tuple[tuple[str, int], ...]
    _by_name: dict[str, int] = field(compare=False, repr=False)

    def __init__(self, **values: Any) -> None:
        config = ESTIMATOR_PARAMS.validate(values)
        object.__setattr__(self, "items", tuple(config.items()))
        object.__setattr__(self, "_by_name", config)
        # A fit needs at least two full moving averages, all inside the history.
        if self.estimation_samples <= self.averaging_window:
            raise ParamError(
                "estimation_samples",
                f"must be > averaging_window ({self.averaging_window}), got {self.estimation_samples}",
            )
        if self.historic_window_size < self.estimation_samples:
            raise ParamError(
                "historic_window_size",
                f"must be >= estimation_samples ({self.estimation_samples}), got {self.historic_window_size}",
            )

    def __getattr__(self, name: str) -> int:
        # only reached for names that are not real attributes: the schema's fields
        if not name.startswith("_"):
            try:
                return self._by_name[name]
            except KeyError:
                pass
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")


@dataclass
class LikelihoodState:
    """Everything the estimator has learned; plain data (numbers + one array)."""

    params: LikelihoodParams
    history: np.ndarray  # ring buffer of raw scores, length historic_window_size
    pos: int = 0  # next slot of `history` to write
    count: int = 0  # scores seen (not capped)
    mean: float = 0.0  # fitted mean of the moving-averaged scores
    std: float = 0.0  # fitted std (>= MIN_STD once fitted)

    @property
    def ready(self) -> bool:
        """True once the distribution has been fitted (the next score gets a real likelihood)."""
        return self.count >= self.params.learning_period + self.params.estimation_samples


def new_likelihood_state(params: LikelihoodParams | None = None) -> LikelihoodState:
    params = params or LikelihoodParams()
    return LikelihoodState(params, np.zeros(params.historic_window_size, dtype=np.float64))


def _last(state: LikelihoodState, m: int) -> np.ndarray:
    """The last ``m`` scores of the ring buffer, oldest first."""
    size = state.params.historic_window_size
    return state.history[(state.pos - m + np.arange(m)) % size]


def _fit(state: LikelihoodState) -> None:
    p = state.params
    m = min(state.count - p.learning_period, p.historic_window_size)
    scores = _last(state, m)
    a = p.averaging_window
    csum = np.concatenate(([0.0], np.cumsum(scores)))
    averages = (csum[a:] - csum[:-a]) / a  # full windows only
    state.mean = float(np.mean(averages))
    state.std = max(float(np.std(averages)), MIN_STD)


def likelihood_update(
    state: LikelihoodState, raw_score: float, *, inplace: bool = False
) -> tuple[LikelihoodState, float]:
    """Judge ``raw_score`` (in [0, 1]) and learn it; returns ``(new_state, likelihood)``.

    The likelihood is :func:`likelihood_from_z` of the judged z-score (graded, < 1),
    0.5 until the first fit. ``state`` is left untouched unless ``inplace=True``
    (which saves copying the history array on every call).
    """
    state, z = likelihood_z_update(state, raw_score, inplace=inplace)
    return state, 0.5 if z is None else likelihood_from_z(z)


def likelihood_z_update(
    state: LikelihoodState, raw_score: float, *, inplace: bool = False
) -> tuple[LikelihoodState, float | None]:
    """Like :func:`likelihood_update`, but returns the z-score ``(short average - mu) / sigma``
    that the likelihood is a function of (``None`` before the first fit).

    ``|z| <= 1 / MIN_STD`` since scores and their averages lie in [0, 1].
    """
    raw_score = float(raw_score)
    if not 0.0 <= raw_score <= 1.0:  # also rejects NaN
        raise ValueError(f"raw anomaly score must be in [0, 1], got {raw_score!r}")
    if not inplace:
        state = dataclasses.replace(state, history=state.history.copy())
    p = state.params
    if state.ready:
        # Short-term average of the last W' scores, this one included. fsum: the
        # result does not depend on where the ring buffer wraps.
        recent = _last(state, p.averaging_window - 1)
        short_avg = math.fsum((*recent.tolist(), raw_score)) / p.averaging_window
        z: float | None = (short_avg - state.mean) / state.std
    else:
        z = None
    # Learn only now: the fit that judged this score did not contain it.
    state.history[state.pos] = raw_score
    state.pos = (state.pos + 1) % p.historic_window_size
    state.count += 1
    first_fit = p.learning_period + p.estimation_samples
    if state.count >= first_fit and (state.count - first_fit) % p.reestimation_period == 0:
        _fit(state)
    return state, z


def likelihood_from_z(z: float) -> float:
    """``L = 1 - Q(z)``, exact for ``Q >= 1e-9`` and graded beyond (always ``< 1``)."""
    return 1.0 - graded_tail(z / SQRT2, 0.5, EXACT_TAIL)


def _log_scale_of_tail(tail: float) -> float:
    # log(e + tail) / log(e) = 1 - log1p(tail / e) / ln(1 / e): no digits of a tiny
    # tail are lost to the addition.
    return max(0.0, 1.0 - math.log1p(tail / _LOG_EPS) / _LOG_NORM)


def log_likelihood_from_z(z: float) -> float:
    """The log-scaled likelihood of ``z``: the paper's value up to ``1 - 4.3e-10``, graded beyond, in [0, 1)."""
    return _log_scale_of_tail(graded_tail(z / SQRT2, 0.5, LOG_SCALE_EXACT_TAIL))


def log_likelihood(likelihood: float) -> float:
    """The paper's log scale of a plain likelihood: ``log(1.0000000001 - L) / log(1 - 0.9999999999)``,
    clipped to [0, 1].

    Only as precise as ``1 - L`` (it saturates at 1.0 for ``L = 1``); the detector
    uses :func:`log_likelihood_from_z`, which never forms ``1 - L``.
    """
    return min(1.0, _log_scale_of_tail(1.0 - likelihood))


def state_to_fields(state: LikelihoodState) -> dict[str, Any]:
    return {
        "history": state.history,
        "pos": state.pos,
        "count": state.count,
        "mean": state.mean,
        "std": state.std,
    }


def state_from_fields(params: LikelihoodParams, fields: dict[str, Any]) -> LikelihoodState:
    try:
        history, pos, count = fields["history"], int(fields["pos"]), int(fields["count"])
        mean, std = float(fields["mean"]), float(fields["std"])
    except KeyError as err:
        raise StateError(f"likelihood: stored state lacks field {err}") from None
    size = params.historic_window_size
    if not (
        isinstance(history, np.ndarray)
        and history.shape == (size,)
        and history.dtype == np.float64
        and 0 <= pos < size
        and count >= 0
        and math.isfinite(mean)
        and math.isfinite(std)
    ):
        raise StateError(f"likelihood: stored state does not match historic_window_size={size}")
    return LikelihoodState(params, history.copy(), pos, count, mean, std)


# -- detector ------------------------------------------------------------------------
class LikelihoodDetector(Detector):
    """Any registered detector, with its probability replaced by the anomaly likelihood."""

    name: ClassVar[str] = "likelihood"
    state_version: ClassVar[int] = 1
    params: ClassVar[ParamSchema] = ParamSchema(
        (
            Param("base", str, "ema", "name of the detector whose anomaly_probability stream is judged"),
            Param("base_params", dict, {}, "parameters of the base detector"),
            Param(
                "threshold",
                float,
                0.5,
                "anomaly_probability (log-scaled likelihood if log_scale) at or above which a point is "
                "anomalous; 0.5 on the log scale is a likelihood of ~0.99999",
                minimum=0.0,
                maximum=1.0,
                exclusive_minimum=True,
            ),
            Param("log_scale", bool, True, "report the log-scaled likelihood instead of the plain one"),
            *ESTIMATOR_PARAMS.params,
        )
    )

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        # Imported here: the registry imports detector modules lazily, and this
        # module is one of them.
        from detectors.registry import get_detector_class

        cfg = self.config
        self._base_cls = get_detector_class(cfg["base"], field="base")
        # Normalise base_params to the base's full validated set, so the state
        # fingerprint does not depend on how a default was spelled.
        cfg["base_params"] = self._base_cls.params.validate(dict(cfg["base_params"]), prefix="base_params.")
        self._base = self._base_cls(**cfg["base_params"])
        self._lparams = LikelihoodParams(**{name: cfg[name] for name in ESTIMATOR_PARAMS.names})
        self._state = new_likelihood_state(self._lparams)

    def _judge(self, base: AnomalyResult) -> AnomalyResult:
        _, z = likelihood_z_update(self._state, base.anomaly_probability, inplace=True)
        if z is None:
            return AnomalyResult.warming_up()
        prob = log_likelihood_from_z(z) if self.config["log_scale"] else likelihood_from_z(z)
        anomalous = prob >= self.config["threshold"]
        why = None
        if anomalous:
            band = None
            if base.value_lower_limit is not None and base.value_upper_limit is not None:
                band = (base.value_lower_limit, base.value_upper_limit)
            why = explanation("sustained", self.name, sigma=z, expected=band)
        return AnomalyResult(base.value_lower_limit, base.value_upper_limit, prob, anomalous, why)

    def _update(self, ts_ms: int, value: float) -> AnomalyResult:
        return self._judge(self._base.update(ts_ms, value))

    def update_batch(self, ts_ms: np.ndarray, values: np.ndarray) -> BatchResult:
        # The base's batch path is exact, so this equals the point-by-point loop
        # while keeping e.g. the robust detector's vectorised window statistics.
        base = self._base.update_batch(ts_ms, values)
        return BatchResult.from_results([self._judge(base.result(i)) for i in range(len(base))])

    def max_state_bytes(self) -> int:
        """The score ring and a few numbers, plus the base's bound (the default one if it declares none)."""
        base = self._base.max_state_bytes()
        return 8 * self._lparams.historic_window_size + 1024 + (DEFAULT_MAX_STATE_BYTES if base is None else base)

    def _get_state(self) -> dict[str, Any]:
        return {"base": self._base.to_state(), **state_to_fields(self._state)}

    def _set_state(self, state: dict[str, Any], version: int) -> None:
        blob = state.get("base")
        if not isinstance(blob, bytes):
            raise StateError("likelihood: stored state lacks the base detector's state")
        self._base = self._base_cls.from_state(blob, **self.config["base_params"])
        self._state = state_from_fields(self._lparams, {k: v for k, v in state.items() if k != "base"})
