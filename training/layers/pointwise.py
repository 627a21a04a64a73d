"""A linear map over the channel axis of channels-first fields (a 1x1 convolution)."""

from __future__ import annotations

import math

import torch
from torch import nn


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
        # (O, C) @ (B, C, n*n) as a bmm over the batch: one large GEMM per example, about
        # 2x faster on CPU than matmul's broadcasting (which copies) or a 1x1 convolution.
        b, c, ny, nx = x.shape
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            # a graph broadcasts the weight itself; no batch-size arithmetic in it
            return (
                torch.matmul(self.weight, x.flatten(2)).unflatten(2, (ny, nx))
                + self.bias[:, None, None]
            )
        weight = self.weight.expand(b, *self.weight.shape)
        y = torch.bmm(weight, x.reshape(b, c, ny * nx)) + self.bias[:, None]
        return y.reshape(b, -1, ny, nx)
