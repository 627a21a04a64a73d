"""Is a request inside what a model was trained on? The card's envelope decides.

The envelope holds, per system, the ranges of the diffusion anisotropy (the
paper's eigenvalue ratio e), of Psi (advection over diffusion) and of the
Helmholtz w seen in training, and, for models trained on coefficient fields,
the field statistics (:class:`~modelstore.registry.FieldEnvelope`): the laws, the
contrast of K, the relative variation of w and the correlation length. A
field request is checked on its reference coefficients (the log-Euclidean mean
of K, the mean of v and w: how the card records field examples) and on its
field statistics. Where the card records them (:class:`~modelstore.registry.SourceEnvelope`),
the source is checked too: its peak, RMS and the shares of its energy at large and fine
scales (:mod:`modelstore.sources`). A request outside any of them, of a system the model
never saw, or with fields (constants) where the model has no graph for them, gets the
reasons back, one sentence each.

The answer's own evidence comes after the model has run: :func:`estimate_reason` says
when a surrogate answer's error estimate exceeds :data:`ESTIMATE_FACTOR` times the error
the card measured on the problem's band.
"""

from __future__ import annotations

import numpy as np

from datagen.coefficients import K11, K12, K22, W, reference, variation, varying
from datagen.sampling import advection_psi
from datagen.systems import anisotropy
from modelstore.bands import band_for
from modelstore.registry import ModelCard
from modelstore.sources import STATISTICS, source_statistics

#: Relative slack on the trained ranges: the training data sample the open interval.
SLACK = 0.01
#: The correlation-length estimate's slack: it reads 0.7 l at l = 0.3 and l +- 8% at 0.05
#: (periodic fields of lengths near the domain's lose their longest waves).
LENGTH_SLACK = 0.3
#: The correlation length is estimated on at most this grid: fields of the laws' lengths
#: (>= 0.05) have no power above its Nyquist wavenumber (exp(-2 pi^2 l^2 k^2) < 1e-80 at
#: k = 64), and at 512^2 the full spectrum cost 5.6 ms per request.
LENGTH_GRID = 128
#: Values within this relative distance count as one phase (two-phase laws).
PHASE_RTOL = 1e-6
#: Relative slack on the training sources' ranges. Their amplitude: the bundled model's
#: mean error on 32 training-law sources scaled by 0.9 / 1.1 was 0.90x / 1.5x its error
#: at their own amplitude on Helmholtz (w = 4), 0.98x / 1.12x on Poisson; the ranges
#: themselves are the extremes of 4,096 draws, a little inside the law's.
SOURCE_SLACK = 0.1
#: A surrogate answer whose error estimate exceeds this times the card's mean error on
#: the problem's band is flagged (and replaced where the request falls back). Per-example
#: errors spread log-normally about a band's mean (:data:`modelstore.bands.LOG_SPREAD`,
#: 0.6): 1.7% of answers inside the training distribution exceed 3x the mean (5.5% on
#: Helmholtz with a varying w, spread 1.0), while the answers the envelope missed came out
#: at 3.4x (varying-w Helmholtz, 1.0 against 0.29) to 16x (a sin*cos Poisson source,
#: 0.53 against 0.034): 3 catches all of them at a small false-alarm rate.
ESTIMATE_FACTOR = 3.0


def _outside(value: float, bounds: tuple[float, float], slack: float = SLACK) -> bool:
    lo, hi = bounds
    return not lo - slack * abs(lo) <= value <= hi + slack * abs(hi)


def _phases(a: np.ndarray) -> int:
    """How many distinct values (to PHASE_RTOL) the field a takes: 1, 2, or 3 for more."""
    lo, hi = float(a.min()), float(a.max())
    scale = max(abs(lo), abs(hi), 1e-300)
    if hi - lo <= PHASE_RTOL * scale:
        return 1
    # near lo or near hi, in one distance from the midpoint
    near = np.abs(a - (lo + hi) / 2) >= (hi - lo) / 2 - PHASE_RTOL * scale
    return 2 if near.all() else 3


def correlation_length(g: np.ndarray) -> float:
    """The correlation length of a field whose covariance is squared-exponential,
    exp(-r^2 / (2 l^2)), from its spectrum: its density ~ exp(-2 pi^2 l^2 |k|^2) has mean
    |k|^2 = 1 / (2 pi^2 l^2)."""
    step = max(1, g.shape[-1] // LENGTH_GRID)
    g = g[::step, ::step]  # the laws' fields hold no waves this coarser grid misses
    g = g - g.mean()
    n = g.shape[-1]
    power = np.abs(np.fft.fft2(g)) ** 2
    k = np.fft.fftfreq(n, 1.0 / n)
    mean_k2 = float((power * (k[:, None] ** 2 + k[None, :] ** 2)).sum() / power.sum())
    return 1.0 / (np.pi * np.sqrt(2.0 * mean_k2))


def field_statistics(
    coefficients: np.ndarray, length: bool = True
) -> dict[str, float | str | None]:
    """What the envelope checks of one problem's fields (6, n, n): its law, contrast of K,
    variation of w and correlation length (None where it has no meaning, or not asked
    for: ``length=False``)."""
    c = coefficients[None]
    var = varying(c)[0]
    k_varies = bool(var[[K11, K22, K12]].any())
    kappa = np.sqrt(c[0, K11] * c[0, K22] - c[0, K12] ** 2) if k_varies else None
    medium = np.log(kappa) if k_varies else c[0, W] if var[W] else None
    law = estimated = None
    if medium is not None:
        law = "two-phase" if _phases(medium) == 2 else "smooth"
        if law == "smooth" and length:
            estimated = correlation_length(medium)
    return {
        "law": law,
        "contrast": float(kappa.max() / kappa.min()) if k_varies else None,
        "variation": float(variation(c)[0]) if var[W] else None,
        "length": estimated,
    }


def envelope_reasons(
    card: ModelCard,
    pde: str,
    source: np.ndarray,
    coefficients: np.ndarray,
    stats: dict[str, float | str | None] | None = None,
    reference_: np.ndarray | None = None,
    source_stats: dict[str, float | None] | None = None,
) -> list[str]:
    """Why ``coefficients`` (unified: (6,), or (6, n, n) fields) or ``source`` lie outside
    ``card``'s envelope; [] if inside. ``stats``, ``reference_`` and ``source_stats``: the
    fields' :func:`field_statistics`, reference coefficients (1, 6) and the source's
    :func:`~modelstore.sources.source_statistics` where the caller has them already."""
    fields = np.ndim(coefficients) == 3
    if fields and "fields" not in card.graphs:
        return [f"{card.ref} has no graph for coefficient fields (it takes constants only)"]
    if not fields and "constant" not in card.graphs:
        return [f"{card.ref} has no graph for constant coefficients (it takes fields only)"]
    if not card.envelope:
        return []
    env = card.envelope.get(pde)
    if env is None:
        trained = ", ".join(sorted(card.envelope))
        return [f"{card.ref} was not trained on {pde} (it was trained on {trained})"]
    c = np.asarray(coefficients, dtype=np.float64)[None]
    reasons = []
    if fields:
        c_ref = reference(c) if reference_ is None else reference_
        if env.field is None:
            return [f"{card.ref} was trained on constant {pde} coefficients only, not on fields"]
        stats = field_statistics(c[0]) if stats is None else stats
        laws = env.field.laws
        if stats["law"] is not None and "unrecorded" not in laws and stats["law"] not in laws:
            reasons.append(
                f"the field looks like a {stats['law']} medium; the model was trained on "
                f"{', '.join(laws)} media"
            )
        trained = {
            "contrast": env.field.contrast,
            "variation": env.field.variation,
            "correlation length": env.field.length,
        }
        for name, key in (("contrast", "contrast"), ("variation", "variation")):
            value, bounds = stats[key], trained[name]
            if value is not None and bounds is not None and _outside(value, bounds):
                reasons.append(_sentence(f"the field's {name}", value, bounds))
        value, bounds = stats["length"], trained["correlation length"]
        if value is not None and bounds is not None and _outside(value, bounds, LENGTH_SLACK):
            reasons.append(_sentence("the field's correlation length (estimated)", value, bounds))
        c = c_ref
    checks = []
    if env.eig is not None and pde != "helmholtz":
        checks.append(("eigenvalue ratio", float(anisotropy(c)[0]), env.eig))
    if env.psi is not None:
        checks.append(("Psi", float(advection_psi(source[None], c)[0]), env.psi))
    if env.omega is not None:
        checks.append(("omega" if not fields else "mean omega", float(c[0, W]), env.omega))
    reasons += [
        _sentence(name, value, bounds) for name, value, bounds in checks if _outside(value, bounds)
    ]
    return reasons + source_reasons(card, pde, source, source_stats)


def source_reasons(
    card: ModelCard,
    pde: str,
    source: np.ndarray,
    stats: dict[str, float | None] | None = None,
) -> list[str]:
    """Why ``source`` (n, n; mean-projected where the system needs it) lies outside the
    training sources ``card`` records for ``pde``; [] if inside or unrecorded. ``stats``:
    its :func:`~modelstore.sources.source_statistics`, where the caller has them."""
    env = card.envelope.get(pde)
    if env is None or env.source is None:
        return []
    stats = source_statistics(source) if stats is None else stats
    trained = env.source.model_dump()
    return [
        _sentence(f"the source's {words}", stats[key], trained[key])
        for key, words in STATISTICS.items()
        if stats[key] is not None and _outside(stats[key], trained[key], SOURCE_SLACK)
    ]


def estimate_reason(
    card: ModelCard, pde: str, stats: dict[str, float | str | None] | None, estimate: float
) -> str | None:
    """Why a surrogate answer with error ``estimate`` is not to be trusted: the estimate
    exceeds :data:`ESTIMATE_FACTOR` times the card's error on the problem's band (``stats``:
    the fields' :func:`field_statistics`, None for constants); None where it does not, or
    the card measured no error on the band."""
    stats = stats or {}
    measure = stats.get("contrast") if pde != "helmholtz" else stats.get("variation")
    band = band_for(card, pde, stats.get("law"), measure)
    if band is None or not estimate > ESTIMATE_FACTOR * band.error:
        return None
    return (
        f"the surrogate's error estimate {estimate:.3g} is {estimate / band.error:.1f}x "
        f"{card.ref}'s measured error on {band.key} ({band.error:.3g}; flagged above "
        f"{ESTIMATE_FACTOR:g}x)"
    )


def _sentence(name: str, value: float, bounds: tuple[float, float]) -> str:
    return (
        f"{name} = {value:.4g} is outside the model's training range "
        f"{bounds[0]:.4g}..{bounds[1]:.4g}"
    )
