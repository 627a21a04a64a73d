"""Coefficient fields in the solver, against independent checks: manufactured solutions
(sympy), scipy's cg/gmres on the same operator, the FFT solve for constant fields; and the
solver's refusals and convergence reports."""

import numpy as np
import pytest
import sympy as sp

from datagen import apply, residual, solve
from datagen.coefficients import broadcast_fields, reference
from datagen.field_operator import FieldOperator, gradient
from datagen.krylov import cg, gmres, scipy_operators
from datagen.solver import ConvergenceError, FieldError, relative_l2, solve_detailed
from datagen.systems import CoefficientError, unified_coefficients

POISSON_C = unified_coefficients(0.031, 0.018, 0.006)
ADV_C = unified_coefficients(0.031, 0.018, 0.006, 0.35, -0.22)
HELM_C = unified_coefficients(0.01, 0.01, 0.0, 0.0, 0.0, 7.0)
CASES = [("poisson", POISSON_C), ("advection_diffusion", ADV_C), ("helmholtz", HELM_C)]

X, Y = sp.symbols("x y")
TWO_PI = 2 * sp.pi


def on_grid(expr, n):
    x = np.arange(n) / n
    xg, yg = np.meshgrid(x, x)  # [y, x]
    return np.broadcast_to(sp.lambdify((X, Y), expr, "numpy")(xg, yg), (n, n)).astype(float)


def manufactured(system, n):
    """(f, u, coefficient fields) with f = L u computed symbolically from analytic (not
    band-limited) u and coefficients: K = a(x) K0, a general tensor field, a
    divergence-free v, a varying w."""
    u = sp.sin(TWO_PI * Y + sp.Rational(3, 10)) * sp.exp(sp.sin(TWO_PI * X))  # mean 0
    u += sp.Rational(3, 10) * sp.cos(TWO_PI * (X + Y))
    r = 1 / (sp.Rational(3, 2) - sp.cos(TWO_PI * X) * sp.cos(TWO_PI * Y))  # in [0.4, 2]
    k11 = k22 = k12 = v1 = v2 = w = sp.Integer(0)
    if system == "helmholtz":
        k11 = k22 = sp.Rational(1, 100)
        u += sp.Rational(1, 2)  # Helmholtz keeps the mean
        w = 7 * (1 + r / 10)
    elif system == "poisson_tensor":  # not a scalar times a constant tensor
        k11 = sp.Rational(2, 100) * r
        k22 = sp.Rational(15, 1000) * (1 + sp.Rational(3, 10) * sp.cos(TWO_PI * Y))
        k12 = sp.Rational(4, 1000) * sp.sin(TWO_PI * (X + Y))
    else:
        k11, k22, k12 = (r * POISSON_C[0, j] for j in range(3))
        if system == "advection_diffusion":  # the curl of a stream function: divergence-free
            psi = r / 20
            v1, v2 = sp.Rational(3, 10) + sp.diff(psi, Y), -sp.Rational(1, 5) - sp.diff(psi, X)
    ux, uy = sp.diff(u, X), sp.diff(u, Y)
    div = sp.diff(k11 * ux + k12 * uy, X) + sp.diff(k12 * ux + k22 * uy, Y)
    f = -div + v1 * ux + v2 * uy - w * u
    fields = np.stack([on_grid(e, n) for e in (k11, k22, k12, v1, v2, w)])
    return on_grid(f, n), on_grid(u, n), fields


@pytest.mark.parametrize(
    "system", ["poisson", "poisson_tensor", "advection_diffusion", "helmholtz"]
)
def test_manufactured_solutions_converge_spectrally(system):
    name = "poisson" if system == "poisson_tensor" else system
    errors = {}
    for n in (16, 32, 64):
        f, u, c = manufactured(system, n)
        got = solve(name, f, c, tolerance=1e-13, mean="project")
        errors[n] = relative_l2(got, u)
    assert errors[64] <= 1e-8, errors
    # geometric convergence, down to rounding
    assert errors[16] > 100 * errors[32], errors
    assert errors[32] > 100 * errors[64] or errors[64] < 1e-12, errors


@pytest.mark.parametrize("system,c", CASES)
def test_constant_fields_in_the_krylov_path_give_the_fft_solve(system, c, rng):
    """White noise carries the Nyquist modes: the field operator must keep them."""
    n = 32
    f = rng.standard_normal((3, n, n))
    if system != "helmholtz":
        f -= f.mean(axis=(1, 2), keepdims=True)
    fields = broadcast_fields(np.repeat(c, 3, axis=0), n)
    op = FieldOperator(fields, system != "helmholtz")
    method = cg if system == "poisson" else gmres
    result = method(op, op.to_spectral(f), tolerance=1e-13, max_iterations=20)
    assert result.converged.all()
    assert relative_l2(op.to_grid(result.x), solve(system, f, c)).max() < 1e-10
    # solve() sends constant fields to the FFT path: bit for bit the scalar answer
    assert np.array_equal(solve(system, f, fields), solve(system, f, c))
    assert np.allclose(apply(system, f, fields), apply(system, f, c), rtol=0, atol=1e-10)


def smooth_fields(rng, b, n, contrast, c=POISSON_C):
    """K = a(x) K0 with a log-normal-ish a of the given contrast (low modes only)."""
    x = np.arange(n) / n
    xg, yg = np.meshgrid(x, x)
    g = np.zeros((b, n, n))
    for kx in range(-2, 3):
        for ky in range(-2, 3):
            g += rng.normal(size=(b, 1, 1)) * np.cos(
                2 * np.pi * (kx * xg + ky * yg) + rng.uniform(0, 2 * np.pi, (b, 1, 1))
            )
    g = 2 * (g - g.min(axis=(1, 2), keepdims=True)) / np.ptp(g, axis=(1, 2), keepdims=True) - 1
    a = np.exp(np.log(np.asarray(contrast, dtype=float))[:, None, None] / 2 * g)
    fields = broadcast_fields(np.repeat(c, b, axis=0), n)
    fields[:, :3] *= a[:, None]
    return fields


def zero_mean_noise(rng, b, n):
    f = rng.standard_normal((b, n, n))
    return f - f.mean(axis=(1, 2), keepdims=True)


def test_the_field_operator_is_symmetric_positive_and_sees_nyquist_modes(rng):
    n = 16
    c = smooth_fields(rng, 1, n, [50.0])
    u, v = zero_mean_noise(rng, 2, n)
    lu, lv = apply("poisson", np.stack([u, v]), np.repeat(c, 2, axis=0))
    assert np.isclose(np.vdot(lu, v), np.vdot(u, lv), rtol=1e-12)
    assert np.vdot(lu, u) > 0
    nyquist = np.cos(np.pi * np.arange(n))[None, :] * np.ones((n, 1))  # kx = n/2
    # -D . (K D u) with odd derivatives alone annihilates it; the split operator does not
    assert np.abs(gradient(nyquist[None])).max() < 1e-12
    assert np.linalg.norm(apply("poisson", nyquist, c[0])) > 1e-3 * np.linalg.norm(nyquist)


@pytest.mark.parametrize(
    "system,c", [("poisson", POISSON_C), ("advection_diffusion", ADV_C), ("helmholtz", HELM_C)]
)
def test_agrees_with_scipy_one_sample_at_a_time(system, c, rng):
    from scipy.sparse.linalg import cg as scipy_cg
    from scipy.sparse.linalg import gmres as scipy_gmres

    n, b = 32, 3
    fields = smooth_fields(rng, b, n, [4.0, 10.0, 30.0], c)
    if system == "helmholtz":
        fields = broadcast_fields(np.repeat(c, b, axis=0), n)
        fields[:, 5] *= 1 + 0.2 * np.sin(2 * np.pi * np.arange(n) / n)[None, None, :]
    f = zero_mean_noise(rng, b, n) if system != "helmholtz" else rng.standard_normal((b, n, n))
    ours = solve_detailed(system, f, fields, tolerance=1e-12)
    assert ours.method == (("cg",) * b if system == "poisson" else ("gmres",) * b)
    op = FieldOperator(fields, system != "helmholtz")
    for i in range(b):
        a, m = scipy_operators(op, i)
        if system == "poisson":
            theirs, info = scipy_cg(a, f[i].ravel(), rtol=1e-12, maxiter=500, M=m)
        else:
            theirs, info = scipy_gmres(a, f[i].ravel(), rtol=1e-12, restart=30, maxiter=50, M=m)
        assert info == 0
        theirs = theirs.reshape(n, n)
        if system != "helmholtz":
            theirs -= theirs.mean()
        assert relative_l2(ours.solutions[i], theirs) < 1e-8


def test_each_example_stops_at_its_own_convergence(rng):
    n = 32
    fields = smooth_fields(rng, 3, n, [2.0, 20.0, 200.0])
    f = zero_mean_noise(rng, 3, n)
    out = solve_detailed("poisson", f, fields, tolerance=1e-9)
    assert out.iterations[0] < out.iterations[1] < out.iterations[2]
    true = np.linalg.norm(residual("poisson", out.solutions, f, fields), axis=(1, 2))
    true /= np.linalg.norm(f, axis=(1, 2))
    assert np.all(out.relative_residual <= 1e-9) and np.allclose(
        true, out.relative_residual, rtol=0.05
    )
    alone = solve_detailed("poisson", f[1], fields[1], tolerance=1e-9)
    assert alone.iterations[0] == out.iterations[1]
    assert relative_l2(alone.solutions, out.solutions[1]) < 1e-12


def test_a_batch_mixes_constant_and_field_examples(rng):
    n = 16
    fields = smooth_fields(rng, 2, n, [1.0, 10.0])  # contrast 1: a constant field
    fields = np.concatenate([fields, broadcast_fields(ADV_C, n)])
    f = zero_mean_noise(rng, 3, n)
    out = solve_detailed("advection_diffusion", f, fields)
    assert out.method == ("fft", "cg", "fft") and out.iterations[0] == 0
    assert np.all(out.relative_residual <= 1e-8)


@pytest.mark.parametrize("system,c", CASES)
def test_an_initial_guess_starts_the_solver(system, c, rng):
    n = 32
    fields = smooth_fields(rng, 2, n, [10.0, 10.0], c)
    if system == "helmholtz":
        fields = broadcast_fields(np.repeat(c, 2, axis=0), n)
        fields[:, 5] *= 1 + 0.3 * np.cos(2 * np.pi * np.arange(n) / n)[None, :, None]
    f = zero_mean_noise(rng, 2, n)
    cold = solve_detailed(system, f, fields, tolerance=1e-10)
    near = cold.solutions * (1 + 1e-3 * rng.standard_normal(cold.solutions.shape))
    warm = solve_detailed(system, f, fields, tolerance=1e-10, initial_guess=near)
    assert np.all(warm.iterations < cold.iterations)
    assert relative_l2(warm.solutions, cold.solutions).max() < 1e-8
    exact = solve_detailed(system, f, fields, tolerance=1e-6, initial_guess=cold.solutions)
    assert np.all(exact.iterations == 0)


def test_not_converging_is_an_error_that_says_so(rng):
    n = 32
    fields = smooth_fields(rng, 2, n, [2.0, 300.0])
    f = zero_mean_noise(rng, 2, n)
    with pytest.raises(
        ConvergenceError, match=r"cg solver did not converge for example 1: relative residual"
    ) as e:
        solve("poisson", f, fields, max_iterations=12)
    assert e.value.examples == [1]
    sol = e.value.solution
    assert sol.converged.tolist() == [True, False] and sol.relative_residual[1] > 1e-8
    assert sol.iterations[1] == 12


def test_helmholtz_near_resonance_fails_loudly():
    n = 32
    w0 = 0.01 * 4 * np.pi**2 * 5  # on the resonance |k|^2 = 5
    fields = broadcast_fields(unified_coefficients(0.01, 0.01, 0, 0, 0, w0), n)
    fields[0, 5] *= 1 + 1e-3 * np.sin(2 * np.pi * np.arange(n) / n)[None, :]
    x = np.arange(n) / n
    f = np.cos(2 * np.pi * (np.add.outer(2 * x, x)))  # a resonant mode
    with pytest.raises(ConvergenceError, match="resonance"):
        solve("helmholtz", f, fields, max_iterations=200)


@pytest.mark.parametrize("k0", [POISSON_C, unified_coefficients(0.01, 0.01, 0.0)])
def test_reference_is_the_geometric_mean_times_k0_and_exact_for_constants(rng, k0):
    n = 16
    fields = smooth_fields(rng, 2, n, [10.0, 1.0], k0)
    a = fields[0, 0] / k0[0, 0]
    ref = reference(fields)
    assert np.allclose(ref[0, :3], np.exp(np.log(a).mean()) * k0[0, :3], rtol=1e-12, atol=0)
    assert np.array_equal(ref[1], k0[0])
    # a general tensor field: the log-Euclidean mean against eigendecompositions
    from scipy.linalg import expm

    def logm(m):
        lam, vec = np.linalg.eigh(m)
        return vec @ np.diag(np.log(lam)) @ vec.T

    fields[0, 2] = 0.3 * np.sqrt(fields[0, 0] * fields[0, 1]) * np.cos(np.arange(n) / 3)
    mats = np.stack([[fields[0, 0], fields[0, 2]], [fields[0, 2], fields[0, 1]]]).transpose(
        2, 3, 0, 1
    )
    expected = expm(np.mean([logm(m) for m in mats.reshape(-1, 2, 2)], axis=0))
    got = reference(fields)[0]
    assert np.allclose([got[0], got[1], got[2]], expected[[0, 1, 0], [0, 1, 1]], rtol=1e-10)


def _fields(c, n=16, b=1):
    return broadcast_fields(np.repeat(c, b, axis=0), n)


def _bad(index, at, value, c=POISSON_C):
    fields = _fields(c, b=2)
    fields[(1, index, *at)] = value
    return fields


@pytest.mark.parametrize(
    "system,coefficients,match",
    [
        (
            "poisson",
            _bad(2, (3, 5), 0.05),
            r"K = \[\[0.031, 0.05\], \[0.05, 0.018\]\] at example 1, grid point \[3, 5\] "
            r"\(x = 0.3125, y = 0.1875\) is not symmetric positive definite",
        ),
        ("poisson", _bad(0, (0, 1), -0.01), r"example 1, grid point \[0, 1\]"),
        ("poisson", _bad(1, (2, 2), np.nan), r"'k22' is nan at example 1, grid point \[2, 2\]"),
        ("poisson", _bad(3, (4, 4), 0.5), r"'v1' must be 0 everywhere .*grid point \[4, 4\]"),
        ("helmholtz", _bad(0, (1, 1), 0.02, HELM_C), r"'k11' must be 0.01 everywhere"),
        ("poisson", np.zeros((2, 5, 16, 16)), r"shape \(6, n, n\) or \(B, 6, n, n\)"),
    ],
)
def test_bad_fields_name_the_first_offending_point(system, coefficients, match):
    f = np.zeros((2, 16, 16))
    with pytest.raises(CoefficientError, match=match):
        solve(system, f, coefficients)


def test_velocity_fields_must_be_divergence_free(rng):
    n = 16
    x = np.arange(n) / n
    fields = _fields(ADV_C)
    fields[0, 3] += 0.2 * np.sin(2 * np.pi * x)[None, :]  # d v1 / dx != 0
    with pytest.raises(CoefficientError, match="not divergence-free"):
        solve("advection_diffusion", zero_mean_noise(rng, 1, n), fields)
    fields = _fields(ADV_C)
    fields[0, 3] += 0.2 * np.sin(2 * np.pi * x)[:, None]  # v1(y): divergence-free
    out = solve_detailed("advection_diffusion", zero_mean_noise(rng, 1, n), fields)
    assert out.method == ("gmres",) and out.converged.all()


def test_field_shapes_grids_and_arguments_are_checked(rng):
    fields = _fields(POISSON_C, n=16)
    f = zero_mean_noise(rng, 1, 32)
    with pytest.raises(FieldError, match="coefficient fields are 16 x 16 but sources are 32 x 32"):
        solve("poisson", f, fields)
    f = zero_mean_noise(rng, 1, 16)
    with pytest.raises(FieldError, match="mean"):
        solve("poisson", f + 1.0, smooth_fields(rng, 1, 16, [5.0]))
    with pytest.raises(FieldError, match="initial_guess must be shaped like the sources"):
        solve("poisson", f, smooth_fields(rng, 1, 16, [5.0]), initial_guess=np.zeros((3, 16, 16)))
    with pytest.raises(ValueError, match="tolerance must be in"):
        solve("poisson", f, fields, tolerance=0.0)
    with pytest.raises(ValueError, match="max_iterations must be >= 1"):
        solve("poisson", f, fields, max_iterations=0)


def test_solves_in_threads_leave_the_blas_threads_as_they_were(rng):
    """The Krylov loops run on one BLAS thread; concurrent solves share that limit."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_info

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    fields, f = smooth_fields(rng, 2, 16, [5.0, 50.0]), zero_mean_noise(rng, 2, 16)
    expected = solve("poisson", f, fields)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: solve("poisson", f, fields), range(8)))
    assert all(np.array_equal(r, expected) for r in results)
    assert blas_threads() == before


@pytest.mark.parametrize("system,c", CASES)
def test_the_error_estimate_of_constant_problems_is_the_true_error(system, c, rng):
    from datagen.solver import error_estimate

    n, b = 32, 3
    f = zero_mean_noise(rng, b, n)
    exact = solve(system, f, np.repeat(c, b, axis=0))
    # an error of every kind: noise, a mean (the exact solution has none), a scale
    wrong = exact + 0.03 * np.std(exact) * rng.standard_normal(exact.shape)
    wrong[1] += 0.1 * np.abs(exact[1]).max()
    wrong[2] *= 1.2
    estimate = error_estimate(system, wrong, f, np.repeat(c, b, axis=0))
    assert np.allclose(estimate, relative_l2(wrong, exact), rtol=1e-9)
    assert error_estimate(system, exact[0], f[0], c[0]) < 1e-12  # one problem: a float


@pytest.mark.parametrize("system,c", CASES)
def test_the_error_estimate_of_field_problems_is_the_preconditioned_residual(system, c, rng):
    from datagen.solver import error_estimate

    n, b = 32, 2
    fields = smooth_fields(rng, b, n, [3.0, 30.0], c)
    if system == "helmholtz":
        fields = broadcast_fields(np.repeat(c, b, axis=0), n)
        fields[:, 5] *= 1 + 0.3 * np.cos(2 * np.pi * np.arange(n) / n)[None, :, None]
    f = zero_mean_noise(rng, b, n)
    exact = solve(system, f, fields, tolerance=1e-12)
    wrong = exact * (1 + 0.05 * rng.standard_normal(exact.shape))
    # a second path: the residual by apply(), L_ref^-1 by the constant solver on reference()
    r = -residual(system, wrong, f, fields)
    e = solve(system, r - r.mean(axis=(1, 2), keepdims=True), reference(fields), mean="project")
    if system != "helmholtz":
        e -= wrong.mean(axis=(1, 2), keepdims=True)
    norm = lambda a: np.linalg.norm(a.reshape(b, -1), axis=1)  # noqa: E731
    want = norm(e) / norm(wrong + e)
    estimate = error_estimate(system, wrong, f, fields)
    # (the estimate stays on the spectra: what the grid cannot hold of the residual's
    # Nyquist modes, apply() drops, which moves the figure by 1e-4 of itself)
    assert np.allclose(estimate, want, rtol=2e-3)
    true = relative_l2(wrong, exact)
    assert np.all((estimate > true / 3) & (estimate < 3 * true))  # and it tracks the error
    # the service's way: validated already, the reference given, in single precision
    quick = error_estimate(
        system, wrong, f, fields, checked=True, reference=reference(fields), single=True
    )
    assert np.allclose(quick, estimate, rtol=1e-5)
    if system != "helmholtz":  # K = a(x) K0 here: a / a_ref given spares finding it
        scalar = fields[:, 0] / reference(fields)[:, 0, None, None]
        given = error_estimate(
            system, wrong, f, fields, checked=True, reference=reference(fields), scalar=scalar
        )
        assert np.allclose(given, estimate, rtol=1e-12)
    mixed = np.concatenate([fields[:1], broadcast_fields(c, n)])  # constant rows go by FFT
    constant = solve(system, f[0], c[0])
    both = error_estimate(system, np.stack([wrong[0], constant]), np.stack([f[0], f[0]]), mixed)
    assert np.isclose(both[0], estimate[0], rtol=1e-12) and both[1] < 1e-10


@pytest.mark.parametrize("system,c", [("poisson", POISSON_C), ("advection_diffusion", ADV_C)])
def test_a_deadline_stops_the_krylov_solvers(system, c, rng):
    import time

    from datagen.solver import SolveTimeout

    n = 64
    fields = smooth_fields(rng, 2, n, [1000.0, 1000.0], c)
    f = zero_mean_noise(rng, 2, n)
    t0 = time.perf_counter()
    with pytest.raises(SolveTimeout, match="time allowed ran out") as info:
        solve_detailed(  # the reference preconditioner: the scaled one is done in time
            system,
            f,
            fields,
            tolerance=1e-14,
            max_iterations=100_000,
            deadline=time.time() + 0.05,
            preconditioner="reference",
        )
    assert time.perf_counter() - t0 < 1.0  # stopped at the deadline, not at 100,000 iterations
    assert isinstance(info.value, ConvergenceError) and not info.value.solution.converged.any()
    assert solve_detailed(system, f, fields, deadline=time.time() + 60).converged.all()


# -- preconditioners -----------------------------------------------------------------


def _smooth_medium(rng, b, n, contrast, length):
    from datagen.media import conductivity, gaussian_random_fields

    g = gaussian_random_fields(rng, np.full(b, length), n)
    a = conductivity(g, np.full(b, float(contrast)), "smooth")
    fields = broadcast_fields(np.repeat(POISSON_C, b, axis=0), n)
    fields[:, :3] *= a[:, None]
    return fields


def _scaled_green_by_hand(r, fields):
    """S^-1 L_ref^-1 S^-1 r on grid fields with numpy's FFT, written from the module's
    definition: s^2 = sqrt(det K) / sqrt(det K_ref), the Nyquist modes by L_ref^-1 alone."""
    n = r.shape[-1]
    ref = reference(fields[None])[0]
    s = np.sqrt(fields[0] * fields[1] - fields[2] ** 2) / np.sqrt(ref[0] * ref[1] - ref[2] ** 2)
    s = np.sqrt(s)
    k = np.fft.fftfreq(n, 1 / n)
    kx, ky = np.fft.rfftfreq(n, 1 / n)[None, :], k[:, None]
    nyq = (np.abs(ky) == n // 2) | (kx == n // 2)
    # even factors with the Nyquist wavenumber, odd ones without (datagen.symbol)
    kx_odd, ky_odd = np.where(kx == n // 2, 0, kx), np.where(np.abs(ky) == n // 2, 0, ky)
    symbol = 4 * np.pi**2 * (ref[0] * kx**2 + ref[1] * ky**2 + 2 * ref[2] * kx_odd * ky_odd)
    inverse = np.where(symbol > 0, 1 / np.where(symbol > 0, symbol, 1), 0.0)
    r_hat = np.fft.rfft2(r)
    inner = np.fft.rfft2(np.fft.irfft2(np.where(nyq, 0, r_hat), s=(n, n)) / s)
    inner = np.where(nyq, 0, inner * inverse)
    out = np.fft.rfft2(np.fft.irfft2(inner, s=(n, n)) / s)
    out = np.where(nyq, r_hat * inverse, out)
    return np.fft.irfft2(out, s=(n, n))


def test_the_scaled_green_preconditioner_is_symmetric_positive_and_as_defined(rng):
    from datagen.preconditioners import isotropic_scale

    n = 16
    fields = _smooth_medium(rng, 1, n, 100.0, 0.2)
    op = FieldOperator(fields, True)
    op.scale_preconditioner(np.array([True]), isotropic_scale(fields, op.reference))
    r, q = (op.to_spectral(x[None]) for x in zero_mean_noise(rng, 2, n))
    for x in (r, q):
        x[:, 0, 0] = 0.0
    pr, pq = op.precondition(r), op.precondition(q)
    dot = lambda a, b: float(np.vdot(a.view(float), b.view(float)))  # noqa: E731
    assert np.isclose(dot(pr, q), dot(r, pq), rtol=1e-12) and dot(pr, r) > 0
    by_hand = _scaled_green_by_hand(op.to_grid(r)[0], fields[0])
    assert np.allclose(op.to_grid(pr)[0], by_hand, rtol=0, atol=1e-12 * np.abs(by_hand).max())


def test_cg_with_the_scaled_preconditioner_agrees_with_scipy(rng):
    from scipy.sparse.linalg import LinearOperator
    from scipy.sparse.linalg import cg as scipy_cg

    n, b = 32, 2
    fields = _smooth_medium(rng, b, n, 300.0, 0.25)
    f = zero_mean_noise(rng, b, n)
    ours = solve_detailed("poisson", f, fields, tolerance=1e-11, preconditioner="scaled")
    assert ours.preconditioner == ("scaled",) * b
    op = FieldOperator(fields, True)
    for i in range(b):
        a, _ = scipy_operators(op, i)
        m = LinearOperator(
            (n * n, n * n),
            lambda r, i=i: _scaled_green_by_hand(r.reshape(n, n), fields[i]).ravel(),
            dtype=float,
        )
        its: list[int] = []
        theirs, info = scipy_cg(
            a, f[i].ravel(), rtol=1e-11, maxiter=500, M=m, callback=lambda x, c=its: c.append(1)
        )
        assert info == 0
        theirs = theirs.reshape(n, n) - theirs.mean()
        assert relative_l2(ours.solutions[i], theirs) < 1e-8
        assert abs(len(its) - ours.iterations[i]) <= 2  # the same preconditioner's pace


@pytest.mark.parametrize("preconditioner", ["reference", "scaled"])
@pytest.mark.parametrize("system", ["poisson", "poisson_tensor"])
def test_manufactured_solutions_through_each_preconditioner(system, preconditioner):
    f, u, c = manufactured(system, 64)
    got = solve_detailed(
        "poisson", f, c, tolerance=1e-13, mean="project", preconditioner=preconditioner
    )
    assert got.preconditioner == (preconditioner,)
    assert relative_l2(got.solutions, u) <= 1e-8


def test_the_choice_follows_the_medium(rng):
    from datagen.media import conductivity, gaussian_random_fields

    n = 64
    smooth = _smooth_medium(rng, 2, n, 1000.0, 0.3)  # smooth, high contrast: scaled
    rough = _smooth_medium(rng, 2, n, 10.0, 0.05)  # varies fast: scaling gains too little
    g = gaussian_random_fields(rng, np.full(2, 0.2), n)
    jumps = broadcast_fields(np.repeat(POISSON_C, 2, axis=0), n)
    jumps[:, :3] *= conductivity(g, np.full(2, 100.0), "two-phase")[:, None]  # interfaces
    f = zero_mean_noise(rng, 2, n)
    for fields, want in ((smooth, "scaled"), (rough, "reference"), (jumps, "reference")):
        got = solve_detailed("poisson", f, fields, tolerance=1e-8)
        assert got.preconditioner == (want, want)
    # and where it chose scaled, that was the faster: fewer than half the iterations
    ref = solve_detailed("poisson", f, smooth, tolerance=1e-8, preconditioner="reference")
    auto = solve_detailed("poisson", f, smooth, tolerance=1e-8)
    assert np.all(2 * auto.iterations < ref.iterations)
    assert relative_l2(auto.solutions, ref.solutions).max() < 1e-6
    with pytest.raises(ValueError, match="preconditioner must be"):
        solve_detailed("poisson", f, smooth, preconditioner="multigrid")
