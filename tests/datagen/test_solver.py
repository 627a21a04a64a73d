"""The exact solver against manufactured solutions, its own forward operator and a
second implementation; and its refusals."""

import numpy as np
import pytest
from reference import solve_one

from datagen import apply, residual, solve
from datagen.solver import FieldError, relative_l2, singular_modes, symbol
from datagen.systems import CoefficientError, unified_coefficients

POISSON_C = unified_coefficients(0.031, 0.018, 0.006)
ADV_C = unified_coefficients(0.031, 0.018, 0.006, 0.35, -0.22)
HELM_C = unified_coefficients(0.01, 0.01, 0.0, 0.0, 0.0, 7.0)
CASES = [("poisson", POISSON_C), ("advection_diffusion", ADV_C), ("helmholtz", HELM_C)]


def grid(n):
    x = np.arange(n) / n
    return np.meshgrid(x, x)  # X[y, x] = x, Y[y, x] = y


def operator_on_mode(c, a, b, phase):
    """L applied to cos(2 pi (a x + b y) + phase), in closed form: (cos part, sin part) factors."""
    k11, k22, k12, v1, v2, w = c[0]
    diffusion = 4 * np.pi**2 * (k11 * a * a + k22 * b * b + 2 * k12 * a * b) - w
    advection = -2 * np.pi * (v1 * a + v2 * b)  # d/dx cos = -2 pi a sin
    return diffusion, advection


def manufactured(c, n, modes):
    """u = sum amp cos(2 pi (a x + b y) + phase) and f = L u, written out by hand."""
    X, Y = grid(n)
    u = np.zeros((n, n))
    f = np.zeros((n, n))
    for amp, a, b, phase in modes:
        arg = 2 * np.pi * (a * X + b * Y) + phase
        dcoef, acoef = operator_on_mode(c, a, b, phase)
        u += amp * np.cos(arg)
        f += amp * (dcoef * np.cos(arg) + acoef * np.sin(arg))
    return u, f


@pytest.mark.parametrize("system,c", CASES)
@pytest.mark.parametrize("n", [16, 64, 128])
def test_single_fourier_mode(system, c, n):
    u, f = manufactured(c, n, [(1.3, 3, -2, 0.4)])
    rel = relative_l2(solve(system, f, c), u)
    assert rel < 1e-10


@pytest.mark.parametrize("system,c", CASES)
def test_random_smooth_field(system, c, rng):
    n = 96
    modes = [
        (rng.normal() / (1 + a * a + b * b), a, b, rng.uniform(0, 2 * np.pi))
        for a in range(-12, 13)
        for b in range(0, 13)
        if (a, b) != (0, 0)
    ]
    if system == "helmholtz":
        modes.append((0.7, 0, 0, 0.0))  # Helmholtz keeps the mean
    u, f = manufactured(c, n, modes)
    assert relative_l2(solve(system, f, c), u) < 1e-10


@pytest.mark.parametrize("system,c", CASES)
def test_apply_inverts_solve_on_white_noise(system, c, rng):
    f = rng.standard_normal((4, 128, 128))
    f -= f.mean(axis=(1, 2), keepdims=True)
    u = solve(system, f, c)
    r = residual(system, u, f, c)
    assert np.abs(r).max() / np.abs(f).max() < 1e-10
    assert np.allclose(apply(system, u, c), f, rtol=0, atol=1e-10)


def test_batch_with_one_coefficient_vector_per_example(rng):
    f = np.repeat(rng.standard_normal((1, 32, 32)), 3, axis=0)
    f -= f.mean(axis=(1, 2), keepdims=True)
    c = np.concatenate([POISSON_C, POISSON_C * 2, POISSON_C * 3])
    u = solve("poisson", f, c)
    for i in range(3):
        assert np.allclose(u[i], solve("poisson", f[i], c[i]), atol=1e-14)
    assert np.allclose(u[1] * 2, u[0], atol=1e-12)  # K doubled halves u


@pytest.mark.parametrize("system,c", CASES)
def test_agrees_with_second_implementation(system, c, rng):
    """Per-sample full fft2 with the authors' Nyquist convention: same answer on smooth fields."""
    from reference import gaussian_source

    f = gaussian_source(
        rng.uniform(0, 1, 144) * (rng.random(144) > 0.5), 128, system != "helmholtz"
    )
    ours = solve(system, f, c)
    theirs = solve_one(f, *c[0])
    assert relative_l2(ours, theirs) < 1e-12


def test_zero_mean_solutions(rng):
    f = rng.standard_normal((3, 64, 64))
    u = solve("advection_diffusion", f - f.mean(axis=(1, 2), keepdims=True), ADV_C)
    assert np.abs(u.mean(axis=(1, 2))).max() < 1e-15


def test_nonzero_mean_rejected_or_projected(rng):
    f = rng.standard_normal((2, 32, 32)) + 0.5
    with pytest.raises(FieldError, match="mean"):
        solve("poisson", f, POISSON_C)
    projected = solve("poisson", f, POISSON_C, mean="project")
    explicit = solve("poisson", f - f.mean(axis=(1, 2), keepdims=True), POISSON_C)
    assert np.allclose(projected, explicit, atol=1e-13)
    with pytest.raises(ValueError, match="mean must be"):
        solve("poisson", f, POISSON_C, mean="ignore")


def test_helmholtz_mean_kept_and_not_rejected():
    f = np.full((32, 32), 2.0)
    u = solve("helmholtz", f, HELM_C)
    assert np.allclose(u, -2.0 / 7.0)


def test_helmholtz_resonance_zeroes_the_mode_in_f_and_u():
    n = 32
    # w on the symbol of the modes |k|^2 = 5: 0.01 * 4 pi^2 * 5
    w = 0.01 * 4 * np.pi**2 * 5
    c = unified_coefficients(0.01, 0.01, 0, 0, 0, w)
    assert singular_modes(c, n).sum() > 0
    X, Y = grid(n)
    resonant = np.cos(2 * np.pi * (X + 2 * Y))
    u_other, f_other = manufactured(c, n, [(1.0, 3, 1, 0.0)])
    u = solve("helmholtz", f_other + resonant, c)
    assert relative_l2(u, u_other) < 1e-10
    # apply(solve(f)) gives back f without its resonant part
    assert np.allclose(apply("helmholtz", u, c), f_other, atol=1e-9)


@pytest.mark.parametrize("n", [16, 32])
def test_symbol_is_hermitian_where_rfft2_needs_it(n):
    """The kx = 0 and Nyquist columns of an rfft2 hold both signs of ky: the symbol there
    must satisfy L(-ky) = conj(L(ky)) for solutions to stay real (the Nyquist convention)."""
    s = symbol(ADV_C, n)[0]
    assert s.shape == (n, n // 2 + 1) and s[0, 0] == 0
    flipped = np.roll(s[::-1], 1, axis=0)  # row j -> row (-j) mod n
    for col in (0, n // 2):
        assert np.allclose(flipped[:, col], np.conj(s[:, col]), rtol=0, atol=1e-15)
    # the textbook +n/2 choice breaks it on the Nyquist column (what the convention avoids)
    ky = np.fft.fftfreq(n, 1 / n)
    naive = 2j * np.pi * (ADV_C[0, 3] * (n / 2) + ADV_C[0, 4] * ky)
    assert not np.allclose(np.roll(naive[::-1], 1), np.conj(naive))


@pytest.mark.parametrize(
    "fields,match",
    [
        (np.zeros((31, 31)), "even"),
        (np.zeros((8, 8)), ">= 16"),
        (np.zeros((16, 32)), "shape"),
        (np.zeros((2, 2, 16, 16)), "shape"),
        (np.zeros(16), "shape"),
        (np.full((16, 16), np.nan), "NaN"),
        (np.full((2, 16, 16), np.inf), "NaN or Inf"),
        (np.zeros((16, 16), dtype=complex), "real"),
    ],
)
def test_bad_fields_refused(fields, match):
    with pytest.raises(FieldError, match=match):
        solve("poisson", fields, POISSON_C)


@pytest.mark.parametrize(
    "system,coefficients,match",
    [
        ("poisson", unified_coefficients(0.01, 0.01, 0.02), "positive definite"),
        ("poisson", unified_coefficients(-0.01, 0.01, 0.0), "positive definite"),
        (
            "advection_diffusion",
            unified_coefficients(0.01, 0.0, 0.0, 1.0, 0.0),
            "positive definite",
        ),
        ("poisson", unified_coefficients(0.01, 0.01, 0.0, 0.5, 0.0), "'v1' must be 0"),
        ("poisson", unified_coefficients(0.01, 0.01, 0.0, 0.0, 0.0, 3.0), "'w' must be 0"),
        ("helmholtz", unified_coefficients(0.02, 0.01, 0.0, 0.0, 0.0, 3.0), "'k11' must be 0.01"),
        ("helmholtz", unified_coefficients(0.01, 0.01, 0.0, 0.1, 0.0, 3.0), "'v1' must be 0"),
        ("poisson", np.array([0.01, 0.01, np.nan, 0, 0, 0]), "NaN"),
        ("poisson", np.zeros(5), r"shape \(6,\)"),
    ],
)
def test_bad_coefficients_refused(system, coefficients, match):
    with pytest.raises(CoefficientError, match=match):
        solve(system, np.zeros((16, 16)), coefficients)


def test_coefficient_count_must_match_batch():
    with pytest.raises(FieldError, match="coefficient vectors"):
        solve("poisson", np.zeros((3, 16, 16)), np.repeat(POISSON_C, 2, axis=0))


def test_unknown_system():
    with pytest.raises(ValueError, match="unknown system 'burgers'"):
        solve("burgers", np.zeros((16, 16)), POISSON_C)
