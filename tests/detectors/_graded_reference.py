"""An independent, slow, high-precision reference of the graded tail (tests only).

Written from the definition in ``detectors._stats`` with :mod:`decimal` at 60
digits: ``erfc`` from its Taylor series (small x) or its continued fraction
(x >= 3), and the tail kept as a logarithm so that any float x works. It shares
no code with the detectors.
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext

_PI = Decimal("3.14159265358979323846264338327950288419716939937510582097494459")


def log_erfc(x: float) -> Decimal:
    """``ln erfc(x)`` to ~50 significant digits, for any finite ``x``."""
    with localcontext() as ctx:
        ctx.prec = 60
        ctx.Emax, ctx.Emin = 10**6, -(10**6)
        d = Decimal(x)
        if x < 3.0:
            # erfc = 1 - 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1))
            total, term, n = Decimal(0), d, 0
            while True:
                piece = term / (2 * n + 1)
                total += piece
                if n > 5 and abs(piece) < Decimal(10) ** -58:
                    break
                n += 1
                term = -term * d * d / n
            return (1 - 2 / _PI.sqrt() * total).ln()
        # erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))), evaluated backwards
        depth = 6000 if x < 10.0 else 400
        tail = d
        for k in range(depth, 0, -1):
            tail = d + (Decimal(k) / 2) / tail
        return -d * d - _PI.sqrt().ln() - tail.ln()


def graded_tail(x: float, c: float = 1.0, floor: float = 1e-9) -> float:
    """``q(c * erfc(x))``: the tail itself at or above ``floor``, else ``floor / (1 + ln(1 + ln(floor / t)))``."""
    with localcontext() as ctx:
        ctx.prec = 60
        ctx.Emax, ctx.Emin = 10**6, -(10**6)
        log_t = Decimal(c).ln() + log_erfc(x)
        log_floor = Decimal(floor).ln()
        if log_t >= log_floor:
            return float(log_t.exp())
        return float(Decimal(floor) / (1 + (1 + log_floor - log_t).ln()))


def two_sided(z: float) -> float:
    """Reference ``anomaly_probability`` of a Gaussian detector for ``|x - centre| / scale = z``."""
    return 1.0 - graded_tail(z / math.sqrt(2.0))
