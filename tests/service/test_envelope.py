"""The envelope's field statistics against the laws that made the fields (no server)."""

import numpy as np
import pytest

from datagen.coefficients import broadcast_fields
from datagen.media import conductivity, gaussian_random_fields
from datagen.systems import unified_coefficients
from service.envelope import correlation_length, field_statistics


def darcy_fields(kind: str, contrast: float, length: float, n: int = 64, seed: int = 0):
    g = gaussian_random_fields(np.random.default_rng(seed), np.full(64, length), n)
    a = conductivity(g, np.full(64, contrast), kind)
    fields = broadcast_fields(np.repeat(unified_coefficients(0.02, 0.01, 0.003), 64, axis=0), n)
    fields[:, :3] *= a[:, None]
    return fields


@pytest.mark.parametrize("length", [0.05, 0.1, 0.2])
def test_the_correlation_length_estimate_reads_the_laws_length(length):
    fields = darcy_fields("smooth", 10.0, length)
    estimates = [correlation_length(np.log(f[0])) for f in fields]
    assert 0.75 * length < np.median(estimates) < 1.1 * length
    assert np.percentile(estimates, 95) < 1.2 * length


def test_field_statistics_name_the_law_contrast_and_variation():
    smooth = field_statistics(darcy_fields("smooth", 30.0, 0.1)[0])
    assert smooth["law"] == "smooth" and smooth["contrast"] == pytest.approx(30.0)
    assert smooth["variation"] is None and 0.07 < smooth["length"] < 0.12
    two = field_statistics(darcy_fields("two-phase", 30.0, 0.1)[0])
    assert two["law"] == "two-phase" and two["contrast"] == pytest.approx(30.0)
    assert two["length"] is None  # the estimate holds for smooth laws only
    w = broadcast_fields(unified_coefficients(0.01, 0.01, w=4.0), 64)[0]
    w[5] *= 1 + 0.25 * np.cos(2 * np.pi * np.arange(64) / 64)[None, :]
    helmholtz = field_statistics(w)
    assert helmholtz["contrast"] is None and helmholtz["law"] == "smooth"
    assert helmholtz["variation"] == pytest.approx(0.25, rel=1e-6)
