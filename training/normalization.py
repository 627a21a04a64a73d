"""Normalisation statistics of a training set (paper appendix A.5), stored in the card."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from training.data import FieldData
from training.layers.normalization import Layout, physical_channels

#: Statistics come from at most this many examples, in evenly spread chunks.
MAX_EXAMPLES = 8192


@dataclass(frozen=True)
class NormalizationStats:
    source_ref: float  # median rms(f)
    # per unified channel: median |c| where the term is present; the physical layout
    # appends its own six (the shape's, v / r's and w / r's: a field's mean magnitude)
    coefficient_ref: list[float]
    solution_ref: float  # median rms(u)
    unit_ref: float | None = None  # the physical layout: median rms(u) in rms(f) / r

    def as_dict(self) -> dict:
        return asdict(self)


def _rms(fields: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean(np.square(fields, dtype=np.float64), axis=(-2, -1)))


def _medians(columns: np.ndarray) -> list[float]:
    """Per column of (B, k): the median of the entries > 0, 1 where there is none."""
    out = []
    for column in columns.T:
        present = column[column > 0]
        out.append(float(np.median(present)) if present.size else 1.0)
    return out


def compute_stats(
    data: FieldData, max_examples: int = MAX_EXAMPLES, layout: Layout = "values"
) -> NormalizationStats:
    chunks = data.chunks()
    n_chunks = max(1, min(len(chunks), -(-max_examples // max(len(c) for c in chunks))))
    picked = [chunks[i] for i in np.linspace(0, len(chunks) - 1, n_chunks).round().astype(int)]
    f_norm, u_norm, coefs, physical, in_unit = [], [], [], [], []
    for part in dict.fromkeys(picked):
        ex = data.read(part)
        f_norm.append(_rms(ex.source.numpy()))
        u_norm.append(_rms(ex.solution.numpy()))
        coefs.append(np.abs(ex.coefficients.numpy().astype(np.float64)))
        if layout == "physical":
            with torch.no_grad():
                coefficients = ex.model_coefficients().double()
                channels, unit = physical_channels(ex.source.double(), coefficients)
            channels, unit = np.abs(channels[:, 1:].numpy()), unit.numpy()
            physical.append(channels.mean(axis=(-2, -1)) if channels.ndim == 4 else channels)
            in_unit.append(u_norm[-1][unit > 0] / unit[unit > 0])
    f_norm, u_norm = map(np.concatenate, (f_norm, u_norm))
    coefficient_ref = _medians(np.concatenate(coefs))
    unit_ref = None
    if layout == "physical":
        coefficient_ref += _medians(np.concatenate(physical))
        unit_ref = _medians(np.concatenate(in_unit)[:, None])[0]
    return NormalizationStats(
        source_ref=float(np.median(f_norm[f_norm > 0])),
        coefficient_ref=coefficient_ref,
        solution_ref=float(np.median(u_norm[u_norm > 0])),
        unit_ref=unit_ref,
    )
