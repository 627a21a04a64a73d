"""Is a request inside what a model was trained on? The card's envelope decides.

The envelope holds, per system, the ranges of the diffusion anisotropy (the
paper's eigenvalue ratio e), of Psi (advection over diffusion) and of the
Helmholtz w seen in training. A request outside any of them, or of a system
the model never saw, gets the reasons back, one sentence each.
"""

from __future__ import annotations

import numpy as np

from datagen.sampling import advection_psi
from datagen.systems import anisotropy
from service.registry import ModelCard

#: Relative slack on the trained ranges: the training data sample the open interval.
SLACK = 0.01


def _outside(value: float, bounds: tuple[float, float]) -> bool:
    lo, hi = bounds
    return not lo - SLACK * abs(lo) <= value <= hi + SLACK * abs(hi)


def envelope_reasons(
    card: ModelCard, pde: str, source: np.ndarray, coefficients: np.ndarray
) -> list[str]:
    """Why ``coefficients`` (unified, (6,)) lie outside ``card``'s envelope; [] if inside."""
    if not card.envelope:
        return []
    env = card.envelope.get(pde)
    if env is None:
        trained = ", ".join(sorted(card.envelope))
        return [f"{card.ref} was not trained on {pde} (it was trained on {trained})"]
    c = np.asarray(coefficients, dtype=np.float64)[None]
    checks = []
    if env.eig is not None and pde != "helmholtz":
        checks.append(("eigenvalue ratio", float(anisotropy(c)[0]), env.eig))
    if env.psi is not None:
        checks.append(("Psi", float(advection_psi(source[None], c)[0]), env.psi))
    if env.omega is not None:
        checks.append(("omega", float(c[0, 5]), env.omega))
    return [
        f"{name} = {value:.4g} is outside the model's training range "
        f"{bounds[0]:.4g}..{bounds[1]:.4g}"
        for name, value, bounds in checks
        if _outside(value, bounds)
    ]
