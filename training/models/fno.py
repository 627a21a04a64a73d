"""The Fourier Neural Operator of the paper (appendix A.2), channels-last."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from training.layers.pointwise import PointwiseLinear
from training.layers.projection import ProjectionHead
from training.layers.spectral import SPECTRAL_PATHS, SpectralConv2d
from training.models.base import ModelBase


class FNOBlock(nn.Module):
    """Spectral convolution plus a pointwise linear map: K(x) + W x."""

    def __init__(self, width: int, modes: int, spectral: str):
        super().__init__()
        self.spectral = SpectralConv2d(width, width, modes, spectral)
        self.pointwise = PointwiseLinear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spectral(x) + self.pointwise(x)


class FNO2d(ModelBase):
    """Lift to ``width``, ``n_layers`` Fourier blocks (GELU between), project to fc_dim then out.

    Input and output are channels-first, ``(B, C, n, n)``. ``lift`` is applied by
    the caller when some input channels are constant (see ``PDESurrogate``).
    """

    capabilities: ClassVar[dict[str, bool]] = {
        "onnx_export": True,
        "bf16": True,
        "any_resolution": True,
    }

    def __init__(
        self,
        in_channels: int,
        width: int,
        modes: int,
        n_layers: int = 4,
        fc_dim: int = 128,
        out_channels: int = 1,
        spectral: str = "dft",
    ):
        super().__init__()
        if spectral not in SPECTRAL_PATHS:
            raise ValueError(f"spectral must be one of {SPECTRAL_PATHS}, got {spectral!r}")
        for name, value in (("width", width), ("modes", modes), ("n_layers", n_layers)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.lift = PointwiseLinear(in_channels, width)
        self.blocks = nn.ModuleList(FNOBlock(width, modes, spectral) for _ in range(n_layers))
        self.project = ProjectionHead(width, fc_dim, out_channels)
        self.activation = nn.GELU()

    def set_spectral_path(self, path: str) -> None:
        """Switch every block between the DFT-matmul and FFT paths (same weights)."""
        if path not in SPECTRAL_PATHS:
            raise ValueError(f"spectral must be one of {SPECTRAL_PATHS}, got {path!r}")
        for block in self.blocks:
            block.spectral.path = path

    def trunk(self, h: torch.Tensor) -> torch.Tensor:
        """Fourier blocks and projection on lifted features (B, width, n, n)."""
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i != last:
                h = self.activation(h)
        return self.project(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.lift(x))
