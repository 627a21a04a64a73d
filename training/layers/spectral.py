"""Spectral convolution of the FNO, written as matrix products so it exports to ONNX.

Layout is channels-last: ``(B, ny, nx, C)``. The layer keeps the Fourier modes
``ky in {0..m-1} U {-m..-1}`` (both signs of the first frequency) and
``kx in {0..m-1}`` (the half spectrum of a real field), multiplies each kept
mode by a complex ``C_in x C_out`` matrix and transforms back.

Two paths compute the same thing:

- ``dft``: the truncated forward and inverse DFTs are real matrices over the
  kept modes only (cos/sin blocks), and the complex mode mixing is one batched
  real matmul with a ``[[Wr, Wi], [-Wi, Wr]]`` block weight. Only MatMul,
  Reshape and Transpose reach the ONNX graph.
- ``fft``: ``rfft2`` / ``irfft2`` with complex weights, for training where the
  FFT is faster (large ``m`` on GPU).

Both run in float32 even under autocast: the spectral sums cancel too much
for bfloat16.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

SpectralPath = Literal["dft", "fft"]
SPECTRAL_PATHS: tuple[str, ...] = ("dft", "fft")


def kept_wavenumbers(m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ky, kx) of the kept modes: ky = 0..m-1, -m..-1 and kx = 0..m-1 (float64)."""
    ky = torch.cat([torch.arange(m), torch.arange(-m, 0)]).double()
    kx = torch.arange(m).double()
    return ky, kx


class DFTMatrices(nn.Module):
    """The four real matrices of the truncated transform pair on an n x n grid.

    forward_x  (2m, n):   x-DFT, rows [cos; -sin] -> [Re; Im] over kx
    forward_y  (4m, 2n):  y-DFT acting on [Re; Im] stacked over y
    inverse_y  (2n, 4m):  inverse y-DFT back to [Re; Im] stacked over y, / n
    inverse_x  (n, 2m):   real part of the Hermitian x-sum, / n (x2 for kx > 0)
    """

    def __init__(self, n: int, m: int):
        super().__init__()
        if 2 * m > n:
            raise ValueError(f"{m} modes need a grid of at least {2 * m} points, got {n}")
        ky, kx = kept_wavenumbers(m)
        j = torch.arange(n).double()
        ax = 2 * math.pi * torch.outer(kx, j) / n  # (m, n)
        ay = 2 * math.pi * torch.outer(ky, j) / n  # (2m, n)
        cx, sx, cy, sy = ax.cos(), ax.sin(), ay.cos(), ay.sin()
        hermitian = torch.where(kx == 0, 1.0, 2.0)[:, None]  # kx > 0 stands for +-kx
        mats = {
            "forward_x": torch.cat([cx, -sx]),
            "forward_y": torch.cat([torch.cat([cy, sy], 1), torch.cat([-sy, cy], 1)]),
            "inverse_y": torch.cat([torch.cat([cy.T, -sy.T], 1), torch.cat([sy.T, cy.T], 1)]) / n,
            "inverse_x": torch.cat([hermitian * cx, -hermitian * sx]).T / n,
        }
        for name, mat in mats.items():
            self.register_buffer(name, mat.float(), persistent=False)


def truncated_dft(x: torch.Tensor, m: int) -> torch.Tensor:
    """Kept modes of ``rfft2`` of channels-last ``x`` (B, ny, nx, C): complex (B, 2m, m, C)."""
    x_ft = torch.fft.rfft2(x.float(), dim=(1, 2))
    return torch.cat([x_ft[:, :m, :m], x_ft[:, -m:, :m]], dim=1)


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
        shape = (2 * modes, modes, in_channels, out_channels)
        self.weight_real = nn.Parameter(scale * torch.rand(shape))
        self.weight_imag = nn.Parameter(scale * torch.rand(shape))
        self._dft: dict[int, DFTMatrices] = {}

    def extra_repr(self) -> str:
        c_in, c_out = self.in_channels, self.out_channels
        return f"{c_in}, {c_out}, modes={self.modes}, path={self.path}"

    def matrices(self, n: int, device: torch.device) -> DFTMatrices:
        """DFT matrices for an n x n grid, built once per grid size and device."""
        mats = self._dft.get(n)
        if mats is None or mats.forward_x.device != device:
            mats = DFTMatrices(n, self.modes).to(device)
            self._dft[n] = mats
        return mats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != x.shape[2]:
            raise ValueError(f"expected a square grid (B, n, n, C), got {tuple(x.shape)}")
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            if self.path == "fft":
                return self._forward_fft(x)
            return self._forward_dft(x)

    def _forward_dft(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _, c = x.shape
        m, o = self.modes, self.out_channels
        mats = self.matrices(n, x.device)
        # x-DFT: (2m, n) @ (B, ny, nx, C) -> (B, ny, [Re|Im] kx, C)
        h = torch.matmul(mats.forward_x, x)
        # y-DFT on [Re; Im] stacked along y -> (B, [Re|Im] ky, kx*C)
        h = h.reshape(b, n, 2, m * c).transpose(1, 2).reshape(b, 2 * n, m * c)
        h = torch.matmul(mats.forward_y, h)
        # complex mode mixing as one real bmm per mode: (modes, B, 2C) @ (modes, 2C, 2O)
        h = h.reshape(b, 2, 2 * m * m, c).permute(2, 0, 1, 3).reshape(2 * m * m, b, 2 * c)
        h = torch.bmm(h, self._block_weight())
        # inverse y-DFT -> (B, [Re|Im] y, kx*O)
        h = h.reshape(2 * m * m, b, 2, o).permute(1, 2, 0, 3).reshape(b, 4 * m, m * o)
        h = torch.matmul(mats.inverse_y, h)
        # inverse x-DFT: (n, 2m) @ (B, y, [Re|Im] kx, O) -> (B, y, x, O)
        h = h.reshape(b, 2, n, m, o).permute(0, 2, 1, 3, 4).reshape(b, n, 2 * m, o)
        return torch.matmul(mats.inverse_x, h)

    def _block_weight(self) -> torch.Tensor:
        m, c, o = self.modes, self.in_channels, self.out_channels
        wr = self.weight_real.reshape(2 * m * m, c, o)
        wi = self.weight_imag.reshape(2 * m * m, c, o)
        return torch.cat([torch.cat([wr, wi], 2), torch.cat([-wi, wr], 2)], 1)

    def _forward_fft(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _, _ = x.shape
        m = self.modes
        modes = truncated_dft(x, m)
        weight = torch.complex(self.weight_real, self.weight_imag)
        mixed = torch.einsum("byxi,yxio->byxo", modes, weight)
        out = torch.zeros(b, n, n // 2 + 1, self.out_channels, dtype=mixed.dtype, device=x.device)
        out[:, :m, :m] = mixed[:, :m]
        out[:, -m:, :m] = mixed[:, m:]
        return torch.fft.irfft2(out, s=(n, n), dim=(1, 2))
