"""The Fourier Neural Operator of the paper (appendix A.2), channels-last."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from training.layers.pointwise import PointwiseLinear, channel_matmul
from training.layers.projection import ProjectionHead
from training.layers.spectral import SPECTRAL_PATHS, SpectralConv2d
from training.layers.tracing import exporting
from training.models.base import ModelBase


class FNOBlock(nn.Module):
    """Spectral convolution plus a pointwise linear map: K(x) + W x."""

    def __init__(self, width: int, modes: int, spectral: str):
        super().__init__()
        self.spectral = SpectralConv2d(width, width, modes, spectral)
        self.pointwise = PointwiseLinear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if exporting():
            return self.graph_forward(x)
        return self.spectral(x) + self.pointwise(x)

    def graph_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block as exported graphs compute it, on (B, C, n, n).

        The spectral layer's mean mode and the pointwise bias meet in one small
        per-example constant, so one full-size Add carries both.
        """
        mean = x.mean(dim=(-2, -1), keepdim=True)
        constant = self.spectral.mean_mode(mean.flatten(1)) + self.pointwise.bias
        pointwise = channel_matmul(self.pointwise.weight, x) + constant[:, :, None, None]
        return self.spectral.graph_forward(x - mean) + pointwise

    def graph_forward_rank_one(
        self, f: torch.Tensor, w: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        """``graph_forward(w f + bias)`` for f (B, n, n), w (C,), bias (B, C), without the
        (B, C, n, n) field.

        A lifted input has one varying channel: the spectral transform runs on f
        alone (1 channel, not C) with w folded into the mixing matrices, the
        pointwise map is an outer product, and everything constant over the grid
        joins the per-example constant. The same arithmetic up to rounding (tested).
        """
        spectral, pointwise = self.spectral, self.pointwise
        mean = f.mean(dim=(-2, -1), keepdim=True)  # (B, 1, 1)
        lifted_mean = mean.flatten(1) * w + bias  # (B, C): the mean of every lifted channel
        constant = spectral.mean_mode(lifted_mean) + nn.functional.linear(
            bias, pointwise.weight, pointwise.bias
        )
        mixing = spectral.mixing_matrix().unflatten(1, (spectral.in_channels, 2))
        mixing = torch.einsum("c,jcpq->jpq", w, mixing)  # (modes, 2, 2 C_out)
        varying = spectral.graph_forward((f - mean)[:, None], mixing)
        outer = torch.matmul(pointwise.weight, w)[:, None, None] * f[:, None]
        return varying + (outer + constant[:, :, None, None])


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
        return self._after_first_block(self.blocks[0](h))

    def graph_trunk_rank_one(
        self, f: torch.Tensor, w: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        """``trunk(w f + bias)`` in an exported graph, without building the lifted field
        (see ``FNOBlock.graph_forward_rank_one``): f (B, n, n), w (width,), bias (B, width)."""
        return self._after_first_block(self.blocks[0].graph_forward_rank_one(f, w, bias))

    def _after_first_block(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.blocks[1:]:
            h = block(self.activation(h))
        return self.project(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.lift(x))
