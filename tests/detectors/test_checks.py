"""The contract suite (detectors.checks) on every built-in detector, and on broken ones it must catch."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from detectors import AnomalyResult, BatchResult, Detector, Param, ParamSchema, StateError
from detectors.checks import (
    CHECKS,
    check_batch_equals_update,
    check_bounded_state,
    check_bounds,
    check_detector,
    check_param_schema,
    check_probabilities,
    check_state_round_trip,
    check_state_versioning,
    check_update_many_equals_update_batch,
    default_series,
)
from detectors.registry import BUILTIN_DETECTORS, get_detector_class


@pytest.mark.parametrize("name", sorted(BUILTIN_DETECTORS))
def test_builtin_detector_passes_the_contract_suite(name: str) -> None:
    check_detector(get_detector_class(name))


def test_cad_with_a_fixed_range_passes() -> None:
    # the other mode of CAD: no online range, values clamped; a shorter series keeps it cheap
    check_detector(get_detector_class("cad"), {"min_value": 20.0, "max_value": 90.0, "rest_period": 10},
                   default_series(600, seed=1))


# -- a correct toy detector, and one broken variant per check ---------------------------------------
class Step(Detector):
    """Expects each value within ``tolerance`` of the previous one."""

    name = "step_toy"
    params = ParamSchema((Param("tolerance", float, 5.0, "allowed change", minimum=0.0),))

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._last = math.nan

    def _update(self, ts_ms: int, value: float) -> AnomalyResult:
        last, self._last = self._last, value
        if math.isnan(last):
            return AnomalyResult.warming_up()
        tol = self.config["tolerance"]
        jump = abs(value - last) > tol
        return AnomalyResult(last - tol, last + tol, 0.9 if jump else 0.1, jump)

    def _get_state(self) -> dict[str, Any]:
        return {"last": self._last}

    def _set_state(self, state: dict[str, Any], version: int) -> None:
        if "last" not in state:
            raise StateError("step_toy: stored state lacks field 'last'")
        self._last = float(state["last"])


class Forgetful(Step):
    name = "forgetful"

    def _set_state(self, state: dict[str, Any], version: int) -> None:
        if "last" not in state:
            raise StateError("no")  # refuses garbage, but does not restore what it learnt


class BatchDiffers(Step):
    name = "batch_differs"

    def update_batch(self, ts_ms: np.ndarray, values: np.ndarray) -> BatchResult:
        out = super().update_batch(ts_ms, values)
        return BatchResult(out.value_lower_limit, out.value_upper_limit, out.anomaly_probability + 1e-16,
                           out.is_anomaly, out.explanation)


class Hoarder(Step):
    """Keeps every value: a state that grows with the stream."""

    name = "hoarder"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._all: list[float] = []

    def _update(self, ts_ms: int, value: float) -> AnomalyResult:
        self._all.append(value)
        return super()._update(ts_ms, value)

    def _get_state(self) -> dict[str, Any]:
        return {**super()._get_state(), "all": np.asarray(self._all)}

    def _set_state(self, state: dict[str, Any], version: int) -> None:
        super()._set_state(state, version)
        self._all = [float(v) for v in state.get("all", [])]


class OverItsBound(Step):
    name = "over_its_bound"

    def max_state_bytes(self) -> int:
        return 20  # the header alone is larger


class Saturating(Step):
    name = "saturating"

    def _update(self, ts_ms: int, value: float) -> AnomalyResult:
        r = super()._update(ts_ms, value)
        return AnomalyResult(r.value_lower_limit, r.value_upper_limit, 1.0 if r.is_anomaly else 0.1, r.is_anomaly)


class Inverted(Step):
    name = "inverted"

    def _update(self, ts_ms: int, value: float) -> AnomalyResult:
        r = super()._update(ts_ms, value)
        return AnomalyResult(r.value_upper_limit, r.value_lower_limit, r.anomaly_probability, r.is_anomaly)


class HiddenParam(Step):
    name = "hidden_param"

    def __init__(self, smoothing: float = 0.5, **params: Any) -> None:  # not in the schema
        super().__init__(**params)
        self.smoothing = smoothing


class Undocumented(Step):
    name = "undocumented"
    params = ParamSchema((Param("tolerance", float, 5.0, " ", minimum=0.0),))


class BadDefault(Step):
    name = "bad_default"
    params = ParamSchema((Param("tolerance", float, -1.0, "allowed change", minimum=0.0),))


class Unvalidated(Step):
    """Takes its parameters without the schema's checks."""

    name = "unvalidated"

    def __init__(self, **params: Any) -> None:  # no super().__init__(): nothing validated
        self.config = {**self.params.defaults(), **params}
        self._last = math.nan


class Unversioned(Step):
    """Reads any blob, whatever detector or version wrote it."""

    name = "unversioned"

    @classmethod
    def from_state(cls, blob: bytes, **params: Any) -> Detector:
        from detectors.state import unpack_state

        det = cls(**params)
        _, fields = unpack_state(blob, "test")
        det._set_state(fields, 1)
        return det


class ManyDiffers(Step):
    """A vectorised update_many that drifts from update_batch in the last bit."""

    name = "many_differs"

    @classmethod
    def update_many(cls, states, ts_ms, values, offsets, **params):  # type: ignore[override]
        new_states, result = super().update_many(states, ts_ms, values, offsets, **params)
        return new_states, BatchResult(result.value_lower_limit, result.value_upper_limit,
                                       np.nextafter(result.anomaly_probability, 1.0), result.is_anomaly)


class ManySwallows(Step):
    """An update_many that scores a NaN instead of raising."""

    name = "many_swallows"

    @classmethod
    def update_many(cls, states, ts_ms, values, offsets, **params):  # type: ignore[override]
        clean = np.nan_to_num(np.asarray(values, dtype=np.float64))
        return super().update_many(states, ts_ms, clean, offsets, **params)


SHORT = default_series(400)


@pytest.mark.parametrize(
    ("cls", "check", "message"),
    [
        (Forgetful, check_state_round_trip, "the restored detector's state differs from the blob"),
        (BatchDiffers, check_batch_equals_update, "anomaly_probability of point"),
        (ManyDiffers, check_update_many_equals_update_batch, "anomaly_probability of series 0, point 0"),
        (ManySwallows, check_update_many_equals_update_batch, "a NaN in series 2 was accepted"),
        (Hoarder, check_bounded_state, "grows with the stream"),
        (OverItsBound, check_bounded_state, "above the declared bound of 20"),
        (Saturating, check_probabilities, "is not in [0, 1)"),
        (Inverted, check_bounds, "> value_upper_limit"),
        (HiddenParam, check_param_schema, "'smoothing' is not in the ParamSchema"),
        (Undocumented, check_param_schema, "has no description"),
        (BadDefault, check_param_schema, "does not validate"),
        (Unvalidated, check_param_schema, "(constructor): accepted (expected ParamError naming 'tolerance')"),
        (Unversioned, check_state_versioning, "another detector: accepted"),
    ],
    ids=lambda v: getattr(v, "__name__", "") if not isinstance(v, str) else "",
)
def test_each_check_catches_its_breach(cls: type[Detector], check, message: str) -> None:
    check(Step, None, SHORT)  # the correct toy passes this check...
    with pytest.raises(AssertionError) as err:
        check(cls, None, SHORT)  # ...the broken one does not, and the message says where and who
    text = str(err.value)
    assert text.startswith(f"{check.__name__} failed for detector {cls.name!r}: ")
    assert message in text


def test_a_declared_saturating_probability_is_checked_against_0_to_1() -> None:
    class SaturatingDeclared(Saturating):
        name = "saturating_declared"
        probability_reaches_one = True

    check_probabilities(SaturatingDeclared, None, SHORT)
    assert get_detector_class("cad").probability_reaches_one  # contextOSE's score reaches 1
    assert not any(get_detector_class(n).probability_reaches_one for n in BUILTIN_DETECTORS if n != "cad")


def test_check_detector_runs_every_check_and_names_the_first_failure() -> None:
    check_detector(Step, {"tolerance": 2.0}, SHORT)
    assert len(CHECKS) == 8 and len({c.__name__ for c in CHECKS}) == 8
    with pytest.raises(AssertionError, match=r"^check_bounds failed for detector 'inverted'"):
        check_detector(Inverted, None, SHORT)


def test_a_series_too_short_is_refused() -> None:
    with pytest.raises(AssertionError, match="at least 10 values"):
        check_probabilities(Step, None, [1.0, 2.0])
