"""What a source field looks like to a model: the statistics a card records of its training
sources, and the service checks a request's source against.

The paper's sources (:mod:`datagen.sources`) are sums of Gaussians of width 1/32 on a
12 x 12 lattice, each source divided by its maximum (and its mean removed where the
system needs zero mean). Four numbers tell them from other sources:

- ``peak`` (max |f|) and ``rms`` (the root mean square of f): the model is not linear in
  the source, and it saw one amplitude only (peak 1, or 1 less the mean). The bundled
  model's mean error on 32 training-law sources at 64^2 scaled by 0.5 / 2 was 3.2x /
  11x its error at their own amplitude on Helmholtz (w = 4), 1.6x / 4.7x on Poisson.
  With the peak fixed, the RMS says how much of the domain the source fills: a lone
  Gaussian bump has an RMS of 0.055 (width 1/32) or 0.089 (width 0.05), the law's
  sources 0.12-0.43.
- ``large_scale`` and ``fine_scale``: the shares of the source's mean-free energy at
  wavenumbers |k| <= :data:`LOW_WAVENUMBER` and above :data:`HIGH_WAVENUMBER` (cycles
  per unit length, so the same on any grid). Every law source is made of width-1/32
  bumps, whose power exp(-4 pi^2 |k|^2 / 32^2) leaves 2-13% of the energy above k = 8
  (4,096 draws at 64^2), and the lattice's envelope puts 13-77% at k <= 2.5. A sine
  mode (all its energy at one |k|: all at k <= 2.5 for the lowest, none at either end
  for |k| in 3..8), smoother bumps (width 0.05: 0.2% above 8; width 0.1: 93% at
  k <= 2.5) and rough sources (noise: most energy above 8) fall outside.

A spectral centroid was considered and left out: a mode of |k| = 3.6 sits inside the
law's centroids, yet has none of its fine-scale energy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from datagen import sources as paper
from datagen.systems import get_system
from modelstore.registry import CARD, ModelCard, SourceEnvelope

#: The statistics, in the words a warning uses.
STATISTICS = {
    "peak": "peak |f|",
    "rms": "RMS",
    "large_scale": "share of energy at |k| <= 2.5",
    "fine_scale": "share of energy at |k| > 8",
}
LOW_WAVENUMBER = 2.5
HIGH_WAVENUMBER = 8.0
#: The spectrum is taken on at most this grid (every (n / 128)-th point): the law's
#: sources hold no energy near its Nyquist wavenumber 64 (exp(-2 pi^2 64^2 / 32^2) ~
#: 1e-34), and a full 512^2 spectrum costs a few ms per request. Energy above 64 aliases
#: to lower wavenumbers; such a source is far from the law either way.
SPECTRUM_GRID = 128
#: Law sources drawn for a card's source envelope: a further law source falls outside
#: the range of 4,096 draws with probability about 2 / 4,097 per statistic.
LAW_EXAMPLES = 4096
_CHUNK = 256


def _statistics(sources: np.ndarray) -> dict[str, np.ndarray]:
    """Each statistic of sources (B, n, n), (B,) each; the energy shares NaN where a
    source is constant (it has no mean-free energy)."""
    f = np.asarray(sources, dtype=np.float64)
    peak = np.maximum(f.max(axis=(-2, -1)), -f.min(axis=(-2, -1)))  # no |f| temporary
    rms = np.sqrt(np.einsum("bij,bij->b", f, f) / (f.shape[-2] * f.shape[-1]))
    step = max(1, f.shape[-1] // SPECTRUM_GRID)
    g = f[:, ::step, ::step]
    n = g.shape[-1]
    power = np.abs(np.fft.rfft2(g)) ** 2
    power[:, 0, 0] = 0.0  # the mean
    # rfft2 holds half the spectrum: every column but k_x = 0 (and n/2) stands for two
    twice = np.full(power.shape[-1], 2.0)
    twice[0] = 1.0
    if n % 2 == 0:
        twice[-1] = 1.0
    power *= twice
    k = np.hypot(np.fft.fftfreq(n, 1.0 / n)[:, None], np.fft.rfftfreq(n, 1.0 / n)[None, :])
    energy = power.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        large = power[:, k <= LOW_WAVENUMBER].sum(axis=-1) / energy
        fine = power[:, k > HIGH_WAVENUMBER].sum(axis=-1) / energy
    none = energy <= 1e-24 * np.maximum(rms, 1e-300) ** 2 * n**4
    large[none] = fine[none] = np.nan
    return {"peak": peak, "rms": rms, "large_scale": large, "fine_scale": fine}


def source_statistics(source: np.ndarray) -> dict[str, float | None]:
    """The statistics of one source (n, n) (module docstring); an energy share is None
    where the source is constant."""
    stats = _statistics(np.asarray(source)[None])
    return {k: None if np.isnan(v[0]) else float(v[0]) for k, v in stats.items()}


def source_envelope(sources: np.ndarray, origin: str = "observed") -> SourceEnvelope:
    """The range of each statistic over sources (B, n, n) (constant ones left out of the
    energy shares)."""
    parts = [_statistics(sources[i : i + _CHUNK]) for i in range(0, len(sources), _CHUNK)]
    span = {}
    for key in STATISTICS:
        values = np.concatenate([p[key] for p in parts])
        values = values[np.isfinite(values)]
        span[key] = (float(values.min()), float(values.max()))
    return SourceEnvelope(n_examples=len(sources), origin=origin, **span)


def law_sources(system: str, n: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` sources (count, n, n) of the paper's law as datagen draws them for
    ``system`` (sparsity levels interleaved; zero mean where the system needs it)."""
    rng = np.random.default_rng(seed)
    weights = paper.sample_weights(rng, paper.sparsity_for_indices(np.arange(count)))
    zero_mean = get_system(system).zero_mean
    return np.concatenate(
        [
            paper.build_sources(weights[i : i + _CHUNK], n, zero_mean=zero_mean)[0]
            for i in range(0, count, _CHUNK)
        ]
    )


def law_envelope(system: str, n: int, count: int = LAW_EXAMPLES, seed: int = 0) -> SourceEnvelope:
    """The source envelope of the paper's law for ``system`` at n^2."""
    return source_envelope(law_sources(system, n, count, seed), origin="law")


def with_law_envelopes(card: ModelCard) -> ModelCard:
    """``card`` with the law's source envelope for every system that has none (at the
    card's resolution): for cards of models trained on datagen's sources."""
    if card.resolution is None:
        raise ValueError(f"{card.ref}: the card records no training resolution")
    envelope = {
        system: env
        if env.source is not None
        else env.model_copy(update={"source": law_envelope(system, card.resolution)})
        for system, env in card.envelope.items()
    }
    return card.model_copy(update={"envelope": envelope})


def main(argv: list[str] | None = None) -> int:
    """Add the law's source envelope to published cards in place (their file checksums
    do not cover card.json): for models trained on datagen's sources before cards
    recorded them."""
    p = argparse.ArgumentParser(prog="python -m modelstore.sources", description=main.__doc__)
    p.add_argument("versions", type=Path, nargs="+", help="published version folders")
    args = p.parse_args(argv)
    for folder in args.versions:
        path = folder / CARD
        card = with_law_envelopes(ModelCard.model_validate_json(path.read_bytes()))
        path.write_text(card.model_dump_json(indent=2, by_alias=True))  # as published
        print(f"{path}: source envelopes for {', '.join(sorted(card.envelope))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
