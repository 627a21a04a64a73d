"""The unified operator with coefficient fields, pseudo-spectrally, for the Krylov solvers.

    L u = -div(K(x) grad u) + v(x) . grad u - w(x) u = f

Discretisation: derivatives by FFT, products on the grid, no dealiasing. The
operator is split into a constant reference part and a remainder,

    L u = L_ref u - D . (dK D u) + dv . D u - dw u,

with ``L_ref`` the constant-coefficient operator at the reference coefficients
(:func:`datagen.coefficients.reference`) applied with its Fourier symbol, the
very symbol of the constant-coefficient solver (:mod:`datagen.symbol`: even
factors kx^2, ky^2 with the Nyquist wavenumber, odd factors without), and
``dK = K - K_ref``, ``dv``, ``dw`` the deviations, applied with the odd
spectral derivative D (Nyquist wavenumber 0). Why split: ``-D . (K D u)``
alone never sees the Nyquist modes of u (D annihilates them), so a Krylov
solver stalls on them; with the split, they see ``L_ref``. For constant
fields the remainder vanishes and L is exactly the constant-coefficient
symbol, Nyquist modes included.

Properties the solvers rely on (tests check them):
- with K(x) and K_ref symmetric positive definite and v = w = 0, L is
  symmetric and positive definite on zero-mean fields (D^T = -D, and
  ``L_ref - D^T K_ref D`` is positive semi-definite, non-zero on Nyquist
  modes only);
- with a divergence-free v (``D . v = 0``, which the solver enforces) L
  annihilates constants and maps into zero-mean fields, so zero-mean sources
  have a solution;
- ``L_ref``'s exact FFT inverse is the preconditioner, or for chosen examples the
  scaled Green operator S^-1 L_ref^-1 S^-1 (:mod:`datagen.preconditioners`,
  :meth:`FieldOperator.scale_preconditioner`).

Vectors are rfft2 half-spectra scaled by sqrt(multiplicity) (1 on the
kx = 0 and Nyquist columns, sqrt 2 elsewhere): in those coordinates the
plain real dot product of two spectra is n^2 times the grid inner product of
the fields, so the Krylov methods work in Fourier space, where the
preconditioner is a multiplication, and an operator application costs two
FFT pairs where K varies (a gradient back, a flux forward; one more forward
transform where v or w vary too, one pair where only w does).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft as sfft

from datagen.coefficients import reference, varying
from datagen.symbol import singular_modes, symbol, wavenumbers
from datagen.systems import K11, K12, K22, V1, V2, W

#: v fields of advection-diffusion must be divergence-free to this relative
#: accuracy, ||D . v|| / (||D v1|| + ||D v2||); they are then projected exactly.
DIVERGENCE_TOLERANCE = 1e-2


@lru_cache(maxsize=16)
def spectral_scale(n: int) -> np.ndarray:
    """sqrt of how many full-spectrum modes each rfft2 column stands for, (1, n//2 + 1)."""
    s = np.full((1, n // 2 + 1), np.sqrt(2.0))
    s[0, 0] = s[0, n // 2] = 1.0
    s.setflags(write=False)
    return s


@lru_cache(maxsize=16)
def spectral_scale_in(n: int, dtype: np.dtype) -> np.ndarray:
    """:func:`spectral_scale` in ``dtype`` (cached: it multiplies every spectrum)."""
    s = spectral_scale(n).astype(dtype)
    s.setflags(write=False)
    return s


@lru_cache(maxsize=16)
def _derivatives_in(n: int, dtype: np.dtype) -> np.ndarray:
    """:func:`_derivatives` in ``dtype``'s complex type."""
    d = _derivatives(n).astype(np.result_type(dtype, np.complex64))
    d.setflags(write=False)
    return d


@lru_cache(maxsize=16)
def _scaled_green_masks(n: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the scaled Green preconditioner: 1 / scale off the Nyquist modes (0 on them),
    scale off them (0 on them), and 1 on them only."""
    nyquist = _nyquist_mask(n)
    scale = spectral_scale_in(n, dtype)
    into = np.where(nyquist, 0.0, 1.0 / scale).astype(dtype)
    outof = np.where(nyquist, 0.0, scale).astype(dtype)
    keep = nyquist.astype(dtype)
    for a in (into, outof, keep):
        a.setflags(write=False)
    return into, outof, keep


@lru_cache(maxsize=16)
def _nyquist_mask(n: int) -> np.ndarray:
    """(n, n//2 + 1) True on the Nyquist row and column of a half-spectrum."""
    mask = np.zeros((n, n // 2 + 1), dtype=bool)
    mask[n // 2, :] = True
    mask[:, -1] = True
    mask.setflags(write=False)
    return mask


@lru_cache(maxsize=16)
def _derivatives_over_scale(n: int, dtype: np.dtype) -> np.ndarray:
    out = _derivatives_in(n, dtype) / spectral_scale_in(n, dtype)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=16)
def _from_flux(n: int, dtype: np.dtype) -> np.ndarray:
    """-D scaled: what takes a flux's spectrum to the divergence's (no example's data)."""
    out = -_derivatives_in(n, dtype) * spectral_scale_in(n, dtype)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=16)
def _derivatives(n: int) -> np.ndarray:
    """Odd spectral derivatives 2 pi i (kx, ky), Nyquist 0, as (2, n, n//2 + 1) complex."""
    _, _, ky_odd, kx_odd = wavenumbers(n)
    shape = (n, n // 2 + 1)
    d = 2j * np.pi * np.stack([np.broadcast_to(kx_odd, shape), np.broadcast_to(ky_odd, shape)])
    d.setflags(write=False)
    return d


def gradient(u: np.ndarray) -> np.ndarray:
    """The odd spectral gradient of grid fields (B, n, n), as (B, 2, n, n) [d/dx, d/dy]."""
    n = u.shape[-1]
    d = _derivatives(n)
    return sfft.irfft2(sfft.rfft2(u)[:, None] * d, s=(n, n))


def divergence_free(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project velocity fields (B, 2, n, n) onto D . v = 0 (the odd spectral divergence).

    Returns ``(projected, relative)``: ``relative`` (B,) is ||D . v|| over
    ||D v1|| + ||D v2|| before the projection (0 for constant fields).
    """
    n = v.shape[-1]
    d = _derivatives(n)
    v_hat = sfft.rfft2(v)
    div_hat = (v_hat * d).sum(axis=1)
    lap = (d * d).sum(axis=0)  # -4 pi^2 |k|^2 with odd wavenumbers
    s = spectral_scale(n)
    norm = lambda a: np.sqrt((np.abs(a * s) ** 2).sum(axis=(-2, -1)))  # noqa: E731
    scale = norm(v_hat[:, 0] * d[0]) + norm(v_hat[:, 1] * d[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = np.where(scale > 0, norm(div_hat) / scale, 0.0)
        phi_hat = np.where(lap != 0, div_hat / lap, 0.0)
    projected = sfft.irfft2(v_hat - phi_hat[:, None] * d, s=(n, n))
    return projected, relative


class FieldOperator:
    """L (and the preconditioner L_ref^-1) for a batch of validated coefficient fields.

    ``fields`` (B, 6, n, n) float64, already checked (K positive definite at
    every point, v divergence-free where the system needs it); ``zero_mean``:
    the system's solutions have zero mean (Poisson, advection-diffusion);
    ``reference``: their :func:`reference` coefficients where the caller has them;
    ``dtype``: float32 applies the operator in single precision (half the memory
    traffic and faster FFTs; for estimates, not for solves to tight tolerances);
    ``scalar``: a(x) / a_ref (B, n, n) where the caller knows K = a(x) K0 (the Darcy form
    of a request), which spares the check that finds it.

    How it is applied, fewest passes over memory first: where K varies,
    ``L_ref - D . (dK D u)`` is computed as ``N u - D . (K D u)`` with
    ``N = L_ref + D . K_ref D`` the part of the symbol that the odd derivatives
    miss (non-zero on the Nyquist row and column only, plus the reference
    advection and w where there are any). The gradient comes back to the grid
    as ``h = G grad u`` with G a constant 2 x 2 matrix per example: K_ref where
    K is a scalar field times K_ref (K = a(x) K0, the laws datagen samples and
    the Darcy form; then the flux is ``K grad u = (a / a_ref) h``, one product
    per component), else the identity (then the flux takes the four products
    of a general tensor). The advection remainder is ``(G^-T dv) . h``.
    """

    def __init__(
        self,
        fields: np.ndarray,
        zero_mean: bool,
        reference_: np.ndarray | None = None,
        dtype: type = np.float64,
        scalar: np.ndarray | None = None,
    ):
        self.n = n = fields.shape[-1]
        self.zero_mean = zero_mean
        self.reference = ref = reference(fields) if reference_ is None else reference_
        var = _varying(fields, scalar)
        self.symbol = symbol(ref, n)  # (B, n, n//2 + 1), real or complex
        solvable = ~singular_modes(ref, n)
        self.inverse = np.divide(1.0, self.symbol, out=np.zeros_like(self.symbol), where=solvable)
        r = ref[:, :, None, None]
        b, kk = fields.shape[0], [K11, K22, K12]
        g = np.broadcast_to(np.eye(2), (b, 2, 2))
        self.ratio = self.k = self.dv = self.dw = None
        self.delta = self.dk = None  # the same less the reference: the remainder alone
        self.diagonal = self.symbol  # what multiplies u's spectrum directly
        self.nyquist = None  # (row, column) of N where it lives on the Nyquist modes alone
        if var[:, kk].any():
            k_ref = np.stack([ref[:, [K11, K12]], ref[:, [K12, K22]]], axis=1)
            ratio = _scalar_multiple(fields[:, kk], ref[:, kk]) if scalar is None else scalar
            if ratio is not None:
                self.ratio, g = ratio[:, None], k_ref
                self.delta = self.ratio - 1.0
            else:
                self.k = fields[:, kk]
                self.dk = self.k - r[:, kk]
            diagonal = self.symbol - _odd_diffusion_symbol(ref, n)
            if np.any(ref[:, [V1, V2, W]]):
                self.diagonal = diagonal
            else:
                self.diagonal = None
                column = diagonal[:, :, -1].copy()
                column[:, n // 2] = 0.0  # the corner belongs to the row
                self.nyquist = (diagonal[:, n // 2].copy(), column)
        if var[:, [V1, V2]].any():
            dv = fields[:, [V1, V2]] - r[:, [V1, V2]]
            self.dv = np.einsum("bji,bj...->bi...", np.linalg.inv(g), dv)  # G^-T dv
        if var[:, W].any():
            self.dw = fields[:, W] - r[:, W]
        self.dtype = np.dtype(dtype)
        self.scaled = np.zeros(b, dtype=bool)  # examples preconditioned by scaled Green
        self.sinv = None  # (B, n, n): 1 / s(x) where scaled, else unused
        d = _derivatives_over_scale(n, self.dtype)  # (2, n, m)
        self.to_grad = np.empty((b, 2, *d.shape[1:]), d.dtype)  # G D / scale: (B, 2, n, m)
        for i in range(2):  # two products per component (einsum took 4x as long)
            np.multiply(g[:, i, 0, None, None].astype(d.dtype), d[0], out=self.to_grad[:, i])
            self.to_grad[:, i] += g[:, i, 1, None, None].astype(d.dtype) * d[1]
        self.from_flux = _from_flux(n, self.dtype)
        if self.dtype != np.float64:
            self._cast(self.dtype)

    def _cast(self, dtype: np.dtype) -> None:
        """Every array the operator applies in ``dtype`` (complex ones in its complex)."""
        complex_ = np.result_type(dtype, np.complex64)
        same = self.diagonal is self.symbol
        for name in ("symbol", "inverse", "diagonal"):
            a = getattr(self, name)
            if a is not None:
                setattr(self, name, a.astype(complex_ if np.iscomplexobj(a) else dtype))
        if same:
            self.diagonal = self.symbol
        for name in ("ratio", "delta", "k", "dk", "dv", "dw"):
            a = getattr(self, name)
            if a is not None:
                setattr(self, name, a.astype(dtype))
        if self.nyquist is not None:
            self.nyquist = tuple(a.astype(dtype) for a in self.nyquist)

    def _scale(self) -> np.ndarray:
        return spectral_scale_in(self.n, self.dtype)

    def __len__(self) -> int:
        return self.symbol.shape[0]

    def take(self, rows: np.ndarray) -> FieldOperator:
        """The operator of the examples ``rows`` (a copy; the solvers drop converged ones)."""
        out = object.__new__(FieldOperator)
        out.n, out.zero_mean, out.from_flux = self.n, self.zero_mean, self.from_flux
        out.dtype = self.dtype
        out.scaled = self.scaled[rows]
        out.sinv = None if self.sinv is None else self.sinv[rows]
        names = ("reference", "symbol", "inverse", "to_grad", "ratio", "delta", "k", "dk", "dv")
        for name in (*names, "dw"):
            a = getattr(self, name)
            setattr(out, name, None if a is None else a[rows])
        out.diagonal = None
        if self.diagonal is self.symbol:
            out.diagonal = out.symbol
        elif self.diagonal is not None:
            out.diagonal = self.diagonal[rows]
        out.nyquist = None if self.nyquist is None else tuple(a[rows] for a in self.nyquist)
        return out

    # Conversions between grid fields and scaled half-spectra.
    def to_spectral(self, u: np.ndarray) -> np.ndarray:
        return sfft.rfft2(u.astype(self.dtype, copy=False)) * self._scale()

    def to_grid(self, x: np.ndarray) -> np.ndarray:
        return sfft.irfft2(x / self._scale(), s=(self.n, self.n))

    def scale_preconditioner(self, rows: np.ndarray, s2: np.ndarray) -> None:
        """Precondition examples ``rows`` (boolean (B,)) by the scaled Green operator with
        s(x)^2 = ``s2`` (B, n, n) (:func:`datagen.preconditioners.isotropic_scale`)."""
        self.scaled = np.asarray(rows, dtype=bool).copy()
        self.sinv = (1.0 / np.sqrt(s2)).astype(self.dtype) if self.scaled.any() else None

    def precondition(self, r: np.ndarray) -> np.ndarray:
        """L_ref^-1 r (zero on the modes where L_ref vanishes); S^-1 L_ref^-1 S^-1 r for the
        examples scaled (:meth:`scale_preconditioner`), Nyquist modes apart (there the
        operator is L_ref's alone)."""
        z = r * self.inverse
        rows = np.flatnonzero(self.scaled)
        if rows.size:
            # In the scaled coordinates the spectral scale cancels between a transform and
            # the next: (grid) = irfft(r / scale), rfft(g) * L_ref^-1 (no scale), and back.
            n = self.n
            into, outof, keep = _scaled_green_masks(n, self.dtype)
            g = sfft.irfft2(r[rows] * into, s=(n, n), overwrite_x=True)
            g *= self.sinv[rows]
            w = sfft.rfft2(g, overwrite_x=True)
            w *= self.inverse[rows]
            w *= 1.0 - keep
            g = sfft.irfft2(w, s=(n, n), overwrite_x=True)
            g *= self.sinv[rows]
            inner = sfft.rfft2(g, overwrite_x=True)
            inner *= outof
            inner += z[rows] * keep  # the Nyquist modes: L_ref^-1 alone
            z[rows] = inner
        return z

    def apply(self, x: np.ndarray, *, remainder: bool = False) -> np.ndarray:
        """L x for scaled half-spectra x (B, n, n//2 + 1): two FFT pairs at most.

        ``remainder``: ``(L - L_ref) x`` alone (GMRES orthogonalises that: ``L_ref
        L_ref^-1 v`` is v itself, and subtracting it afterwards would cancel digits).
        """
        n, b = self.n, len(self)
        ratio, k = (self.delta, self.dk) if remainder else (self.ratio, self.k)
        flux = ratio is not None or k is not None
        need_grad = flux or self.dv is not None
        rest = self.dv is not None or self.dw is not None
        if not need_grad and not rest:
            return np.zeros_like(x) if remainder else self.symbol * x
        complex_ = np.result_type(self.dtype, np.complex64)
        back = np.empty((b, 2 * need_grad + (self.dw is not None), n, n // 2 + 1), complex_)
        if need_grad:
            np.multiply(x[:, None], self.to_grad, out=back[:, :2])
        if self.dw is not None:
            np.divide(x, self._scale(), out=back[:, -1])
        grid = sfft.irfft2(back, s=(n, n), overwrite_x=True)
        forth = np.empty((b, 2 * flux + rest, n, n), self.dtype)
        if ratio is not None:
            np.multiply(ratio, grid[:, :2], out=forth[:, :2])
        elif k is not None:
            gx, gy = grid[:, 0], grid[:, 1]
            k11, k22, k12 = k[:, 0], k[:, 1], k[:, 2]
            np.multiply(k11, gx, out=forth[:, 0])
            forth[:, 0] += k12 * gy
            np.multiply(k12, gx, out=forth[:, 1])
            forth[:, 1] += k22 * gy
        if rest:
            other = forth[:, -1]
            if self.dv is not None:
                np.multiply(self.dv[:, 0], grid[:, 0], out=other)
                other += self.dv[:, 1] * grid[:, 1]
            else:
                other.fill(0.0)
            if self.dw is not None:
                other -= self.dw * grid[:, -1]
        spectra = sfft.rfft2(forth, overwrite_x=True)
        if flux:  # out = -D . flux
            out = spectra[:, 0]
            out *= self.from_flux[0]
            spectra[:, 1] *= self.from_flux[1]
            out += spectra[:, 1]
        else:
            out = np.zeros_like(x)
        if rest:
            spectra[:, -1] *= self._scale()
            out += spectra[:, -1]
        if remainder:
            pass
        elif self.diagonal is not None:
            out += self.diagonal * x
        elif self.nyquist is not None:
            row, column = self.nyquist
            out[:, n // 2] += row * x[:, n // 2]
            out[:, :, -1] += column * x[:, :, -1]
        if self.zero_mean:
            out[:, 0, 0] = 0.0  # zero to rounding already (divergence form, D . v = 0)
        return out

    def apply_grid(self, u: np.ndarray) -> np.ndarray:
        """L u for grid fields (B, n, n)."""
        return self.to_grid(self.apply(self.to_spectral(u)))


def _varying(fields: np.ndarray, scalar: np.ndarray | None) -> np.ndarray:
    """:func:`~datagen.coefficients.varying`; where the caller knows K = a(x) K0
    (``scalar``: a / a_ref), K's three columns vary with it, and only v and w are looked
    at (one pass over a field instead of three)."""
    if scalar is None:
        return varying(fields)
    var = np.zeros(fields.shape[:2], dtype=bool)
    flat = np.asarray(scalar).reshape(len(fields), -1)
    var[:, [K11, K22, K12]] = (flat != flat[:, :1]).any(axis=1)[:, None]
    # v1, v2, w are the last three: a view (a list index copied them, 15 ms at 1024^2)
    assert (V1, V2, W) == (3, 4, 5)
    var[:, V1:] = varying(fields[:, V1:])
    return var


def _odd_diffusion_symbol(ref: np.ndarray, n: int) -> np.ndarray:
    """The symbol of -D . (K_ref D u) with odd derivatives D (Nyquist wavenumbers 0)."""
    _, _, ky, kx = wavenumbers(n)
    c = ref[:, :, None, None]
    return (4.0 * np.pi**2) * (
        c[:, K11] * (kx * kx) + c[:, K22] * (ky * ky) + 2.0 * c[:, K12] * (kx * ky)
    )


def _scalar_multiple(k: np.ndarray, k_ref: np.ndarray) -> np.ndarray | None:
    """a (B, n, n) with K(x) = a(x) K_ref at every point of every example (to rounding),
    else None. ``k`` (B, 3, n, n) and ``k_ref`` (B, 3) as [k11, k22, k12]."""
    ratio = (k[:, 0] + k[:, 1]) / (k_ref[:, 0] + k_ref[:, 1])[:, None, None]
    off = np.abs(k - ratio[:, None] * k_ref[:, :, None, None]).max(axis=(1, 2, 3))
    return ratio if np.all(off <= 1e-13 * np.abs(k).max(axis=(1, 2, 3))) else None
