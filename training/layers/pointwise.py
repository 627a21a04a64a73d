"""A linear map over the channel axis of channels-first fields (a 1x1 convolution)."""

from __future__ import annotations

import math

import torch
from torch import nn

from training.layers.tracing import exporting


def channel_matmul(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``weight`` (O, C) applied over the channels of ``x`` (B, C, n, n), for exported graphs.

    One MatMul that broadcasts the weight over the batch, between reshapes whose
    targets are constants (the batch as -1), so the graph needs no shape arithmetic.
    """
    c, ny, nx = (int(d) for d in x.shape[1:])
    return torch.matmul(weight, x.reshape(-1, c, ny * nx)).reshape(-1, weight.shape[0], ny, nx)


class PointwiseLinear(nn.Module):
    """``y[b, :, i, j] = W x[b, :, i, j] + bias`` for (B, C, n, n) fields; nn.Linear's init."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(in_channels)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if exporting():
            return channel_matmul(self.weight, x) + self.bias[:, None, None]
        # (O, C) @ (B, C, n*n) as a bmm over the batch: one large GEMM per example, about
        # 2x faster on CPU than matmul's broadcasting (which copies) or a 1x1 convolution.
        b, c, ny, nx = x.shape
        weight = self.weight.expand(b, *self.weight.shape)
        y = torch.bmm(weight, x.reshape(b, c, ny * nx)) + self.bias[:, None]
        return y.reshape(b, -1, ny, nx)
