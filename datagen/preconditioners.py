"""Preconditioners for the field operator's CG solves, and which one a problem gets.

``reference``: the FFT inverse of L_ref, the constant-coefficient operator at the
reference coefficients (the log-Euclidean mean of K). Its condition number grows with the
contrast of K (about the contrast itself: CG needs ~sqrt(contrast) / 2 ln(2 / tol)
iterations), but it does not care how K varies: smooth or with jumps.

``scaled``: the scaled Green operator (Ladecky et al., arXiv 2508.02613),
P = S^-1 L_ref^-1 S^-1, S the multiplication by s(x). Derivation, for the diffusion
operator L u = -div(K grad u) with K = a(x) K_ref, a scalar a (the Darcy form, a
normalised so that its reference is K_ref), s = sqrt(a): the product rule gives

    div(s^2 K_ref grad u) = s div(K_ref grad (s u)) - s u div(K_ref grad s),

so L = S (L_ref + V) S with V the multiplication by div(K_ref grad s) / s = -(L_ref s) / s,
and P L = S^-1 (I + L_ref^-1 V) S. The preconditioned operator is similar to
I + L_ref^-1 V: its spectrum leaves 1 by how fast s varies against L_ref (|L_ref s| / s
against L_ref's eigenvalues), not by how far a ranges. Smooth media of any contrast give
few iterations; a jump in a makes V a distribution on the interface, and the iterations
explode (measured on two-phase media: 240-750 at contrast 10, none converged in 3,000 at
100).

For a tensor field K(x) the same construction takes the scalar
s(x)^2 = sqrt(det K(x)) / sqrt(det K_ref), the isotropic part of K relative to the
reference (for K = a K0 exactly a / a_ref): P stays symmetric and positive definite on
zero-mean fields, since S^-1 is a symmetric positive multiplication and L_ref^-1 is
symmetric positive definite there, a congruence keeping both (for a zero-mean r,
(r, P r) = (S^-1 r, L_ref^-1 S^-1 r) vanishes only where S^-1 r is constant, which with
s > 0 and a zero mean means r = 0). The Nyquist modes, which the operator sees only
through L_ref, are preconditioned as ``reference`` does.

An application costs two FFT pairs on top of the reference's multiplication: a scaled
CG iteration costs about twice a reference one (measured 0.69 against 0.36 ms at 128^2),
so ``scaled`` pays only where it saves more than half the iterations.

Which one: :func:`choose` predicts both iteration counts, from laws fitted on 108 smooth
media at 128^2 (contrast 5..1000, correlation length 0.05..0.3, CG to 1e-8): the
reference preconditioner needs about 10.1 sqrt(contrast) iterations (8.8..11.0 x), the
scaled one about 5.5 (1 + q)^0.68 contrast^0.14 (rms error of the log 0.13), q the root
mean square of |lap s| / s in units of the Laplacian's lowest eigenvalue, (2 pi)^2: how
fast s varies. ``scaled`` is chosen where the predicted ratio exceeds the cost of its
iteration, :data:`SCALED_COST`; on those 108 problems that chose right 94% of the time
and cost on average 1.004x (at most 1.12x) the better of the two. Two-phase media give
q of 300 and more (a jump is a spike of lap s), and keep ``reference``.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from datagen.systems import K11, K12, K22

#: The names a solve reports.
NAMES = ("reference", "scaled")
#: A scaled iteration's cost in reference iterations (measured 1.9 at 128^2).
SCALED_COST = 1.9
#: The fitted iteration laws (module doc): reference ~ REFERENCE_RATE sqrt(contrast),
#: scaled ~ SCALED_RATE (1 + q)^ROUGHNESS_POWER contrast^CONTRAST_POWER.
REFERENCE_RATE, SCALED_RATE = 10.1, 5.5
ROUGHNESS_POWER, CONTRAST_POWER = 0.68, 0.142


def isotropic_scale(fields: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """s(x)^2 = sqrt(det K(x)) / sqrt(det K_ref), (B, n, n), of fields (B, 6, n, n) and
    their reference coefficients (B, 6)."""
    det = fields[:, K11] * fields[:, K22] - fields[:, K12] ** 2
    det_ref = reference[:, K11] * reference[:, K22] - reference[:, K12] ** 2
    return np.sqrt(det) / np.sqrt(det_ref)[:, None, None]


#: q is measured on at most this grid (point values): smooth media hold no waves it
#: misses, and a jump stays a spike of lap s on it (the fit of the module doc was at 128).
ROUGHNESS_GRID = 128


def roughness(s2: np.ndarray) -> np.ndarray:
    """q per example: the root mean square of |lap s| / s over the grid, in units of the
    lowest eigenvalue of the Laplacian on the unit square, (2 pi)^2; s = sqrt(s2)."""
    step = max(1, s2.shape[-1] // ROUGHNESS_GRID)
    s = np.sqrt(s2[..., ::step, ::step])
    n = s.shape[-1]
    k = sfft.fftfreq(n, 1.0 / n)
    k2 = k[:, None] ** 2 + sfft.rfftfreq(n, 1.0 / n)[None, :] ** 2
    lap = sfft.irfft2(sfft.rfft2(s) * k2, s=(n, n))  # -lap s / (2 pi)^2
    return np.sqrt(((lap / s) ** 2).mean(axis=(1, 2)))


def predicted_iterations(
    q: np.ndarray, contrast: np.ndarray, reduction: float = 1e-8
) -> tuple[np.ndarray, np.ndarray]:
    """CG iterations to reduce the residual by ``reduction`` with the reference and with the
    scaled preconditioner, by the fitted laws (at 1e-8; other reductions as ln(2 / r))."""
    contrast = np.maximum(contrast, 1.0)
    factor = np.log(2.0 / reduction) / np.log(2.0 / 1e-8)
    reference_its = REFERENCE_RATE * np.sqrt(contrast) * factor
    scaled_its = SCALED_RATE * (1.0 + q) ** ROUGHNESS_POWER * contrast**CONTRAST_POWER * factor
    return reference_its, scaled_its


def choose(fields: np.ndarray, reference: np.ndarray, contrast: np.ndarray) -> np.ndarray:
    """True where the scaled Green preconditioner is predicted to solve faster, (B,)."""
    q = roughness(isotropic_scale(fields, reference))
    reference_its, scaled_its = predicted_iterations(q, contrast)
    return reference_its > SCALED_COST * scaled_its
