"""What an answer will cost on this service, measured on its own replicas.

``auto`` compares candidates before it spends anything: the surrogate (the model's call
and the error estimate) against the Krylov solver (iterations times the time of one).
The times are measured here, not assumed: :meth:`CostModel.calibrate` takes a
calibration the replicas run at start-up (:func:`calibration_problem`; the surrogate's
call and the error estimate per grid, one Krylov iteration and a solve's fixed cost per
grid and method), and every answered request updates them (an exponentially weighted
mean, so a loaded service's queues count too).

Iterations follow the preconditioned Krylov solver's theory: to reduce the residual by
a factor r, CG needs about sqrt(kappa) / 2 * ln(2 / r) iterations, kappa the condition
number of the preconditioned operator, about the contrast of K for the reference
preconditioner (measured: 29 / 87 / 252 iterations to 1e-8 at contrast 10 / 100 /
1000 on smooth media; the formula says 30 / 95 / 302). A rate per method and field law,
learned from the solves the service makes, corrects the formula (two-phase media need
about 1.15x; GMRES on Helmholtz has no such bound and learns its own).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import numpy as np

from datagen import preconditioners

#: The method key of CG with the scaled Green preconditioner.
SCALED = "cg-scaled"
#: Grids calibrated at start-up; others scale from the nearest by n^2 log n.
GRIDS = (64, 128, 256, 512)
#: Weight of a new measurement in the running means.
WEIGHT = 0.2


@dataclass
class Running:
    """An exponentially weighted mean (in log space for ``log=True``: rates)."""

    value: float
    count: int = 1

    def update(self, x: float, log: bool = False) -> None:
        w = max(WEIGHT, 1.0 / (self.count + 1))
        if log:
            self.value = math.exp((1 - w) * math.log(self.value) + w * math.log(max(x, 1e-9)))
        else:
            self.value = (1 - w) * self.value + w * x
        self.count += 1


def _scale(n_from: int, n_to: int) -> float:
    return (n_to**2 * math.log(n_to)) / (n_from**2 * math.log(n_from))


def kappa(contrast: float | None, variation: float | None) -> float:
    """The condition number the iteration formula takes: the contrast of K, or for a
    varying w, (1 + delta) / (1 - delta) (a placeholder the learned rate corrects)."""
    if contrast is not None:
        return max(1.0, contrast)
    if variation is not None:
        return (1 + min(variation, 0.9)) / (1 - min(variation, 0.9))
    return 1.0


def iterations_formula(kappa_: float, reduction: float) -> float:
    """sqrt(kappa) / 2 * ln(2 / reduction): iterations of preconditioned CG."""
    return 0.5 * math.sqrt(kappa_) * math.log(2.0 / max(reduction, 1e-300))


class CostModel:
    """Milliseconds per request of each part of an answer, by grid; Krylov iterations by
    method, law, condition and tolerance. Thread-safe; empty until calibrated (then a
    prediction from it is None, and auto does not ask the model)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.surrogate: dict[tuple[int, bool], Running] = {}  # (n, fields) -> ms
        self.estimate: dict[tuple[int, bool], Running] = {}  # (n, fields) -> ms
        self.iteration: dict[tuple[int, str], Running] = {}  # (n, method) -> ms
        self.setup: dict[tuple[int, str], Running] = {}  # (n, method) -> ms
        self.rate: dict[tuple[str, str | None], Running] = {}  # (method, law) -> x formula

    # -- what is known -------------------------------------------------------------------

    def load(self, calibration: dict) -> None:
        """A calibration: ``surrogate`` and ``estimate`` as {(n, fields): ms},
        ``iteration`` and ``setup`` as {(n, method): ms}."""
        with self._lock:
            for name in ("surrogate", "estimate", "iteration", "setup"):
                table = getattr(self, name)
                for key, ms in calibration.get(name, {}).items():
                    table[tuple(key)] = Running(float(ms))

    def _at(self, table: dict, n: int, rest: object) -> float | None:
        hit = table.get((n, rest))
        if hit is not None:
            return hit.value
        known = [k[0] for k in table if k[1] == rest]
        if not known:
            return None
        near = min(known, key=lambda m: abs(math.log(m / n)))
        return table[(near, rest)].value * _scale(near, n)

    # -- predictions ---------------------------------------------------------------------

    def surrogate_ms(self, n: int, fields: bool) -> float | None:
        """The model's answer and its error estimate, one request at grid n."""
        model = self._at(self.surrogate, n, fields)
        estimate = self._at(self.estimate, n, fields)
        return None if model is None or estimate is None else model + estimate

    def iterations(
        self,
        method: str,
        law: str | None,
        kappa_: float,
        reduction: float,
        roughness: float | None = None,
    ) -> float:
        """Krylov iterations to reduce the relative residual by ``reduction``: the
        formula for ``method`` times the rate learned for it and the law."""
        rate = self.rate.get((method, law))
        formula = _formula(method, kappa_, reduction, roughness)
        return formula * (1.0 if rate is None else rate.value)

    def krylov_ms(self, n: int, method: str, iterations: float) -> float | None:
        """A solve's time; ``method`` "cg-scaled" for CG with the scaled Green
        preconditioner (until measured, SCALED_COST plain CG iterations each)."""
        per = self._at(self.iteration, n, method)
        setup = self._at(self.setup, n, method)
        if method == SCALED and per is None:
            per = self._at(self.iteration, n, "cg")
            per = None if per is None else per * preconditioners.SCALED_COST
            setup = self._at(self.setup, n, "cg")
        return None if per is None else (setup or 0.0) + per * iterations

    # -- what requests show --------------------------------------------------------------

    def observe_surrogate(self, n: int, fields: bool, model_ms: float, estimate_ms: float) -> None:
        with self._lock:
            for table, ms in ((self.surrogate, model_ms), (self.estimate, estimate_ms)):
                hit = table.get((n, fields))
                if hit is None:
                    table[(n, fields)] = Running(ms)
                else:
                    hit.update(ms)

    def observe_solve(
        self,
        n: int,
        method: str,
        law: str | None,
        kappa_: float,
        reduction: float,
        iterations: int,
        ms: float,
        roughness: float | None = None,
    ) -> None:
        """A cold Krylov solve: its iterations teach the rate, its time the cost of one."""
        with self._lock:
            if iterations > 0:
                expected = _formula(method, kappa_, reduction, roughness)
                rate = iterations / max(expected, 1.0)
                hit = self.rate.get((method, law))
                if hit is None:
                    self.rate[(method, law)] = Running(rate)
                else:
                    hit.update(rate, log=True)
                setup = self._at(self.setup, n, method) or 0.0
                per = max(ms - setup, 0.0) / iterations
                hit = self.iteration.get((n, method))
                if hit is None:
                    self.iteration[(n, method)] = Running(per)
                else:
                    hit.update(per)


def _formula(method: str, kappa_: float, reduction: float, roughness: float | None) -> float:
    """Iterations before any learning: CG's sqrt(kappa) law, or for CG with the scaled
    Green preconditioner its fitted law in the medium's roughness
    (:func:`datagen.preconditioners.predicted_iterations`)."""
    if method != SCALED:
        return iterations_formula(kappa_, reduction)
    _, its = preconditioners.predicted_iterations(
        np.array([roughness or 0.0]), np.array([kappa_]), reduction
    )
    return float(its[0])


def calibration_problem(n: int, contrast: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """A Darcy problem at grid n for timing: a conductivity of the given contrast,
    exp(ln(contrast) / 2 * sin(2 pi x) sin(2 pi y)), times 0.01 I, and a zero-mean
    Gaussian source. Returns (source (n, n), unified coefficients (6, n, n))."""
    from datagen.systems import unified_field

    x = np.arange(n) / n
    gx, gy = np.meshgrid(x, x)
    a = np.exp(0.5 * np.log(contrast) * np.sin(2 * np.pi * gx) * np.sin(2 * np.pi * gy))
    f = np.exp(-((gx - 0.5) ** 2 + (gy - 0.5) ** 2) / (2 * 0.05**2))
    return f - f.mean(), unified_field(0.01 * a, 0.01 * a, 0.0 * a)


def calibrate_estimate(grids: tuple[int, ...]) -> dict[tuple[int, bool], float]:
    """ms of the error estimate of one field problem per grid (the best of three)."""
    from datagen import solver
    from datagen.coefficients import reference

    out = {}
    for n in grids:
        source, coefficients = calibration_problem(n)
        ref = reference(coefficients[None])
        times = []
        for _ in range(3):  # as the ingress runs it (ingress._Solvers.estimate)
            t0 = time.perf_counter()
            solver.error_estimate(
                "poisson",
                source,
                source,
                coefficients,
                checked=True,
                reference=ref,
                single=True,
                scalar=coefficients[0] / ref[0, 0],
            )
            times.append(1e3 * (time.perf_counter() - t0))
        out[(n, True)] = min(times)
    return out
