"""Normalisation statistics of a training set (paper appendix A.5), stored in the card."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from datagen.systems import COEFFICIENT_NAMES
from training.data import FieldData

#: Statistics come from at most this many examples, in evenly spread chunks.
MAX_EXAMPLES = 8192


@dataclass(frozen=True)
class NormalizationStats:
    source_ref: float  # median rms(f)
    coefficient_ref: list[float]  # per unified channel: median |c| where the term is present
    solution_ref: float  # median rms(u)

    def as_dict(self) -> dict:
        return asdict(self)


def _rms(fields: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean(np.square(fields, dtype=np.float64), axis=(-2, -1)))


def compute_stats(data: FieldData, max_examples: int = MAX_EXAMPLES) -> NormalizationStats:
    chunks = data.chunks()
    n_chunks = max(1, min(len(chunks), -(-max_examples // max(len(c) for c in chunks))))
    picked = [chunks[i] for i in np.linspace(0, len(chunks) - 1, n_chunks).round().astype(int)]
    f_norm, u_norm, coefs = [], [], []
    for part in dict.fromkeys(picked):
        ex = data.read(part)
        f_norm.append(_rms(ex.source.numpy()))
        u_norm.append(_rms(ex.solution.numpy()))
        coefs.append(np.abs(ex.coefficients.numpy().astype(np.float64)))
    f_norm, u_norm, coefs = map(np.concatenate, (f_norm, u_norm, coefs))
    coefficient_ref = []
    for j in range(len(COEFFICIENT_NAMES)):
        present = coefs[:, j][coefs[:, j] > 0]
        coefficient_ref.append(float(np.median(present)) if present.size else 1.0)
    return NormalizationStats(
        source_ref=float(np.median(f_norm[f_norm > 0])),
        coefficient_ref=coefficient_ref,
        solution_ref=float(np.median(u_norm[u_norm > 0])),
    )
