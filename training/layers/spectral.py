"""Spectral convolution of the FNO, written as matrix products so it exports to ONNX.

Layout is channels-first: ``(B, C, ny, nx)``. The layer keeps the Fourier
modes ``ky in {0..m-1} U {-m..-1}`` (both signs of the first frequency) and
``kx in {0..m-1}`` (the half spectrum of a real field), multiplies each kept
mode by a complex ``C_in x C_out`` matrix and transforms back.

Two paths compute the same thing:

- ``dft``: the truncated forward and inverse DFTs are real matrices over the
  kept modes only (cos/sin blocks). The two transforms along x are single
  large GEMMs over ``B*C*ny`` rows; the ones along y act on the already
  truncated ``2m`` columns. The complex mode mixing is two batched real
  matmuls.
- ``fft``: ``rfft2`` / ``irfft2`` with complex weights (for training where
  the FFT is faster).

An exported graph (ONNX) gets the ``dft`` arithmetic in another order: each
2-D transform is a matrix sandwich ``L @ x @ R`` with the batch broadcast, and
the real and imaginary parts travel interleaved along the rows between the two
sides (``(n, 2m)`` read as ``(2n, m)``), so the graph holds no large
transposes, no slicing of quadrants and no shape arithmetic; torch eager keeps
the GEMM form, which is faster there. The two orders agree to float32
rounding (tested).

Both run in float32 even under autocast: the spectral sums cancel too much
for bfloat16.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from training.layers.tracing import exporting

SpectralPath = Literal["dft", "fft"]
SPECTRAL_PATHS: tuple[str, ...] = ("dft", "fft")


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """float32, or float64 where given: half precision is lifted, double kept (references)."""
    return x if x.dtype == torch.float64 else x.float()


def kept_wavenumbers(m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ky, kx) of the kept modes: ky = 0..m-1, -m..-1 and kx = 0..m-1 (float64)."""
    ky = torch.cat([torch.arange(m), torch.arange(-m, 0)]).double()
    kx = torch.arange(m).double()
    return ky, kx


class DFTMatrices(nn.Module):
    """The real matrices of the truncated transform pair on an n x n grid.

    Each is the right operand of a matmul, so every transform is one GEMM over
    all the rows of the batch, and the y transforms take real and imaginary
    parts together (no per-quadrant slicing):

    forward_x (n, 2m):    x -> [Re | Im] over kx
    forward_y (2n, 4m):   [Re | Im] over y -> [Re | Im] over ky (the complex DFT)
    inverse_y (4m, 2n):   [Re | Im] over ky -> [Re | Im] over y (complex inverse, / n)
    inverse_x (2m, n):    [Re | Im] over kx -> x: the real part of the Hermitian sum, / n

    and for the sandwich order of exported graphs (left operands, with rows or
    columns ordered (y, re|im): ``x @ forward_x`` of shape (n, 2m) is the same
    memory as (2n, m)):

    graph_forward_y (4m, 2n):  (y, re|im) -> [Re; Im] over ky, so
                               ``graph_forward_y @ (x @ forward_x).view(2n, m)``
                               is the 2-D transform, [Re; Im] over (ky, kx)
    graph_inverse_y (2n, 4m):  [Re; Im] over ky -> (y, re|im), / n; then
                               ``.view(n, 2m) @ inverse_x`` ends the inverse
    """

    def __init__(self, n: int, m: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        if 2 * m > n:
            raise ValueError(f"{m} modes need a grid of at least {2 * m} points, got {n}")
        ky, kx = kept_wavenumbers(m)
        j = torch.arange(n).double()
        ax = 2 * math.pi * torch.outer(kx, j) / n  # (m, n)
        ay = 2 * math.pi * torch.outer(ky, j) / n  # (2m, n)
        cx, sx, cy, sy = ax.cos(), ax.sin(), ay.cos(), ay.sin()
        hermitian = torch.where(kx == 0, 1.0, 2.0)[:, None]  # kx > 0 stands for +-kx

        def block(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor):
            return torch.cat([torch.cat([a, b], 1), torch.cat([c, d], 1)])

        def interleave(re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
            """(r, n) and (r, n) -> (r, 2n) with columns (y, re|im)."""
            return torch.stack([re, im], -1).flatten(1)

        graph_forward_y = torch.cat([interleave(cy, sy), interleave(-sy, cy)])
        mats = {
            # X(ky) = sum_y e^{-i ky y} X(y): Re' = cos Re + sin Im, Im' = cos Im - sin Re
            "forward_x": torch.cat([cx, -sx]).T,
            "forward_y": block(cy.T, -sy.T, sy.T, cy.T),
            # Z(y) = sum_ky e^{+i ky y} O(ky) / n: Re' = cos Re - sin Im, Im' = sin Re + cos Im
            "inverse_y": block(cy, sy, -sy, cy) / n,
            "inverse_x": torch.cat([hermitian * cx, -hermitian * sx]) / n,
            # the complex transform over y as a left operand on interleaved rows; its
            # inverse is the conjugate transpose, which for real 2x2 blocks is the transpose
            "graph_forward_y": graph_forward_y,
            "graph_inverse_y": graph_forward_y.T / n,
        }
        for name, mat in mats.items():
            self.register_buffer(name, mat.to(dtype).contiguous(), persistent=False)


def truncated_rfft2(x: torch.Tensor, m: int) -> torch.Tensor:
    """Kept modes of ``rfft2`` of channels-first ``x`` (B, C, ny, nx): complex (B, C, ky, kx)."""
    x_ft = torch.fft.rfft2(at_least_float32(x))
    return torch.cat([x_ft[..., :m, :m], x_ft[..., -m:, :m]], dim=-2)


class SpectralConv2d(nn.Module):
    """FNO spectral convolution with real and imaginary weights kept apart."""

    def __init__(self, in_channels: int, out_channels: int, modes: int, path: SpectralPath = "dft"):
        super().__init__()
        if path not in SPECTRAL_PATHS:
            raise ValueError(f"spectral path must be one of {SPECTRAL_PATHS}, got {path!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.modes = modes
        self.path = path
        scale = 1.0 / (in_channels * out_channels)
        shape = (modes, 2 * modes, in_channels, out_channels)  # (kx, ky, in, out)
        self.weight_real = nn.Parameter(scale * torch.rand(shape))
        self.weight_imag = nn.Parameter(scale * torch.rand(shape))
        self._dft: dict[tuple[int, torch.dtype], DFTMatrices] = {}

    def extra_repr(self) -> str:
        c_in, c_out = self.in_channels, self.out_channels
        return f"{c_in}, {c_out}, modes={self.modes}, path={self.path}"

    def matrices(
        self, n: int, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> DFTMatrices:
        """DFT matrices for an n x n grid, built once per grid size, dtype and device."""
        mats = self._dft.get((n, dtype))
        if mats is None or mats.forward_x.device != device:
            mats = DFTMatrices(n, self.modes, dtype).to(device)
            self._dft[(n, dtype)] = mats
        return mats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"expected a square grid (B, C, n, n), got {tuple(x.shape)}")
        with torch.autocast(x.device.type, enabled=False):
            x = at_least_float32(x)
            if self.path == "fft":
                return self._forward_fft(x)
            if exporting():
                return self._forward_exported(x)
            return self._forward_dft(x)

    def _forward_dft(self, x: torch.Tensor) -> torch.Tensor:
        b, c, n, _ = x.shape
        m, o = self.modes, self.out_channels
        k = 2 * m  # kept ky
        mats = self.matrices(int(n), x.device, x.dtype)  # int: a constant of a traced graph
        # The mean mode goes apart, exactly: a field's constant part (the coefficient
        # channels are constant) would otherwise leak its rounding into every other mode.
        mean = x.mean(dim=(-2, -1))  # (B, C)
        dc = self.mean_mode(mean)[:, :, None, None]  # (B, O, 1, 1)
        x = x - mean[:, :, None, None]
        # x-DFT, one GEMM over B*C*ny rows: (B, C, ny, [Re|Im] kx)
        h = torch.matmul(x, mats.forward_x)
        # y-DFT: (B, C, kx, [Re|Im] y) @ (2n, 4m) -> (B, C, kx, [Re|Im] ky)
        h = h.reshape(b, c, n, 2, m).permute(0, 1, 4, 3, 2).reshape(b, c, m, 2 * n)
        h = torch.matmul(h, mats.forward_y)
        # complex mode mixing, per mode (kx, ky): [Re; Im] (2B, C) @ W (C, O), two real bmm
        h = h.reshape(b, c, m, 2, k).permute(2, 4, 3, 0, 1).reshape(m * k, 2 * b, c)
        pr = torch.bmm(h, self.weight_real.reshape(m * k, c, o))
        pi = torch.bmm(h, self.weight_imag.reshape(m * k, c, o))
        h = torch.stack([pr[:, :b] - pi[:, b:], pi[:, :b] + pr[:, b:]], dim=1)
        # inverse y-DFT: (B, O, kx, [Re|Im] ky) @ (4m, 2n) -> (B, O, kx, [Re|Im] y)
        h = h.reshape(m, k, 2, b, o).permute(3, 4, 0, 2, 1).reshape(b, o, m, 2 * k)
        h = torch.matmul(h, mats.inverse_y)
        # inverse x-DFT, one GEMM over B*O*ny rows: (B, O, ny, [Re|Im] kx) @ (2m, n)
        h = h.reshape(b, o, m, 2, n).permute(0, 1, 4, 3, 2).reshape(b, o, n, 2 * m)
        return torch.matmul(h, mats.inverse_x) + dc

    def mixing_matrix(self) -> torch.Tensor:
        """Per kept mode (ky, kx), the real (2 C_in, 2 C_out) matrix of the complex product.

        Rows are (input channel, re|im) and columns (output channel, re|im): the
        interleaved order in which ``graph_forward`` holds the modes. One product per
        mode instead of two with Wr and Wi: ONNX Runtime runs it about 2x faster (many
        small GEMMs either way).
        """
        c, o, m = self.in_channels, self.out_channels, self.modes
        wr = self.weight_real.transpose(0, 1).reshape(2 * m * m, c, o)
        wi = self.weight_imag.transpose(0, 1).reshape(2 * m * m, c, o)
        from_re = torch.stack([wr, wi], -1).flatten(2)  # Re -> (Re' += Re wr, Im' += Re wi)
        from_im = torch.stack([-wi, wr], -1).flatten(2)  # Im -> (Re' -= Im wi, Im' += Im wr)
        return torch.stack([from_re, from_im], 2).flatten(1, 2)

    def mean_mode(self, mean: torch.Tensor) -> torch.Tensor:
        """What the mean mode (ky = kx = 0) adds to every point: (B, C_in) means -> (B, C_out)."""
        return torch.matmul(mean, self.weight_real[0, 0])

    def graph_forward(self, x: torch.Tensor, mixing: torch.Tensor | None = None) -> torch.Tensor:
        """The layer on mean-free fields (B, C, n, n) as exported graphs compute it.

        ``L @ x @ R`` products with the batch broadcast and real and imaginary parts
        interleaved (see ``DFTMatrices``): four MatMuls, the mode mixing and two
        transposes of the small mode tensor; no slicing, no shape arithmetic.

        The mean of every channel must be zero: callers take it apart and add
        ``mean_mode`` (as ``_forward_dft`` does, and for the same reason; with the mean
        inside, the bundled model's graph came out 7e-5 from the float64 model at 128^2,
        against 3e-6).
        ``mixing`` stands in for ``mixing_matrix()`` where a caller has folded a linear
        map of the input channels into it.
        """
        c, n = int(x.shape[1]), int(x.shape[-1])  # ints: constants of a traced graph
        m = self.modes
        k = 2 * m  # kept ky
        mixing = self.mixing_matrix() if mixing is None else mixing
        o = int(mixing.shape[-1]) // 2
        mats = self.matrices(n, x.device, x.dtype)
        # (B, C, y, [Re|Im] kx) is (B, C, (y, re|im), kx): the y transform is one left product
        p = torch.matmul(x, mats.forward_x).reshape(-1, c, 2 * n, m)
        p = torch.matmul(mats.graph_forward_y, p)  # (B, C, [Re; Im] ky, kx)
        h = p.reshape(-1, 2 * c, k * m).permute(2, 0, 1)  # (modes, B, (C, re|im))
        out = torch.matmul(h, mixing).permute(1, 2, 0).reshape(-1, o, 2 * k, m)
        z = torch.matmul(mats.graph_inverse_y, out).reshape(-1, o, n, 2 * m)
        return torch.matmul(z, mats.inverse_x)

    def _forward_exported(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(-2, -1), keepdim=True)
        return self.graph_forward(x - mean) + self.mean_mode(mean.flatten(1))[:, :, None, None]

    def _forward_fft(self, x: torch.Tensor) -> torch.Tensor:
        b, _, n, _ = x.shape
        m = self.modes
        modes = truncated_rfft2(x, m)
        weight = torch.complex(self.weight_real, self.weight_imag)
        mixed = torch.einsum("biyx,xyio->boyx", modes, weight)
        out = torch.zeros(b, self.out_channels, n, n // 2 + 1, dtype=mixed.dtype, device=x.device)
        out[..., :m, :m] = mixed[..., :m, :]
        out[..., -m:, :m] = mixed[..., m:, :]
        return torch.fft.irfft2(out, s=(n, n))
