"""What a model card says of the model's error, per band of problems.

Export measures the model on held-out test sets and records the mean relative L2 error
of each in the card's metrics, under a key :func:`band_key` writes (``pdeserve eval``
names its results the same way): ``test_rel_l2/SYSTEM`` for constant coefficients, and
``test_rel_l2/SYSTEM-LAW(LOW,HIGH)`` for coefficient fields, where LOW..HIGH is the test
set's contrast of K (diffusion) or variation of w (Helmholtz), e.g.
``test_rel_l2/poisson-two-phase(10,100)``. :func:`band_for` finds the band a problem
falls in; the planner predicts the surrogate's error from it. A card without such keys,
or a problem in none of its bands, has no prediction: the model's error is unknown.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from modelstore.registry import ModelCard

PREFIX = "test_rel_l2/"
_KEY = re.compile(r"^(?P<system>[a-z_]+)(?:-(?P<law>[a-z-]+)\((?P<low>[^,]+),(?P<high>[^)]+)\))?$")
#: The spread assumed for per-example errors around a band's mean (the card gives only
#: the mean): the standard deviation of log(error). The bundled model, 128 held-out
#: examples per band at 128^2: 0.31-0.52 on the constant systems, 0.41-0.61 on Darcy
#: media, 1.0 on Helmholtz with a varying w (whose mean error, 0.31, rules the surrogate
#: out below tolerances of about 0.3 anyway).
LOG_SPREAD = 0.6


def band_key(system: str, law: str | None = None, span: tuple[float, float] | None = None) -> str:
    """The metric name of a test set's error (without the ``test_rel_l2/`` prefix)."""
    if law is None or span is None:
        return system
    return f"{system}-{law}({span[0]:g},{span[1]:g})"


@dataclass(frozen=True)
class Band:
    """Problems of one system (and for fields one law and a range of the contrast, or of
    the variation for Helmholtz) and the model's mean error on them."""

    system: str
    law: str | None  # None: constant coefficients
    low: float | None
    high: float | None
    error: float  # mean relative L2 on the test set

    @property
    def key(self) -> str:
        span = None if self.low is None else (self.low, self.high)
        return band_key(self.system, self.law, span)

    def holds(self, system: str, law: str | None, measure: float | None) -> bool:
        if system != self.system or law != self.law:
            return False
        if law is None:
            return True
        return measure is not None and self.low <= measure <= self.high

    def chance_within(self, tolerance: float) -> float:
        """P(error <= tolerance) for a problem of the band, taking per-example errors as
        log-normal about the band's mean with spread :data:`LOG_SPREAD`."""
        if self.error <= 0:
            return 1.0
        sigma = LOG_SPREAD
        median = self.error * math.exp(-0.5 * sigma**2)  # a log-normal of this mean
        z = math.log(tolerance / median) / sigma
        return 0.5 * math.erfc(-z / math.sqrt(2))


def bands(card: ModelCard) -> list[Band]:
    """Every band the card measured."""
    out = []
    for key, value in card.metrics.items():
        if not key.startswith(PREFIX):
            continue
        match = _KEY.match(key[len(PREFIX) :])
        if match is None or match["system"] == "all":
            continue
        try:
            low = None if match["low"] is None else float(match["low"])
            high = None if match["high"] is None else float(match["high"])
        except ValueError:
            continue
        out.append(Band(match["system"], match["law"], low, high, float(value)))
    return out


def band_for(card: ModelCard, system: str, law: str | None, measure: float | None) -> Band | None:
    """The band of a problem: its system, its field law (None for constant coefficients)
    and its contrast (diffusion) or variation (Helmholtz). Where bands overlap, the one
    with the larger error."""
    found = [b for b in bands(card) if b.holds(system, law, measure)]
    return max(found, key=lambda b: b.error) if found else None
