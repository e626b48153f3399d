"""Explanations: a short, stable, machine-readable reason for an anomaly.

Every anomaly a built-in detector reports carries a compact JSON object (a string, so
it travels unchanged through Kafka JSON and a text column)::

    {"kind": "spike", "sigma": 5.1, "expected": [94.1, 108.3], "by": "ema"}

* ``kind``: one of :data:`KINDS`:
  ``spike`` / ``dip`` - the value lies above / below the expected band;
  ``level_shift`` - it is the second or later point in a row beyond the band on the
  same side; ``new_range`` - beyond the band and beyond every value band the
  detector's model has learnt (``default``: beyond every value of the stream so far);
  ``pattern`` - inside the band, but the sequence or shape is new (CAD, or the
  values); ``sustained`` - inside the band, but a run of points is unlike usual: their
  anomaly scores are unlikely (a likelihood), or their values are unlike the same
  time yesterday and a week ago (``default``).
* ``sigma``: distance of the value from the centre of what was expected, in
  standard deviations of the detector's reference (EMA: its EW std; robust:
  MAD / 0.6745; ``default``: its forecast's residual scale), one decimal; ``null``
  where the detector has no such scale (``cad``).
* ``expected``: the detector's band ``[lower, upper]`` for this point (6 significant
  digits), ``null`` when it has none.
* ``by``: what raised the alarm: the detector's name, or for ``default`` its part
  (``level`` or ``seasonal``: the forecast that came closest; ``range``: a new
  extreme; ``seasonal`` for a sustained change too).

Keys always appear, in this order; normal points have no explanation (``None``).

>>> explanation("spike", "ema", sigma=5.123, expected=(94.1234567, 108.3))
'{"kind":"spike","sigma":5.1,"expected":[94.1235,108.3],"by":"ema"}'
>>> explanation("pattern", "cad")
'{"kind":"pattern","sigma":null,"expected":null,"by":"cad"}'
"""

from __future__ import annotations

import json
import math

KINDS = ("spike", "dip", "level_shift", "new_range", "pattern", "sustained")


def _num(x: float, digits: int) -> float | None:
    return float(f"{x:.{digits}g}") if math.isfinite(x) else None


def explanation(
    kind: str, by: str, *, sigma: float | None = None, expected: tuple[float, float] | None = None
) -> str:
    """The explanation string; ``sigma``/``expected`` may be omitted (``null``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown explanation kind {kind!r}; one of {KINDS}")
    body = {
        "kind": kind,
        "sigma": None if sigma is None or not math.isfinite(sigma) else round(float(sigma), 1),
        "expected": None if expected is None else [_num(float(expected[0]), 6), _num(float(expected[1]), 6)],
        "by": by,
    }
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


def band_explanation(value: float, lower: float, upper: float, sigma: float, by: str) -> str:
    """A band detector's anomaly: ``spike`` above the band, ``dip`` below (else ``pattern``)."""
    kind = "spike" if value > upper else "dip" if value < lower else "pattern"
    return explanation(kind, by, sigma=sigma, expected=(lower, upper))
