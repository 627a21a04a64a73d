"""The FNO's projection head, linear -> GELU -> linear over channels, fused in tiles on CPU.

The head widens to ``hidden`` channels (128 in the paper) at every grid point:
on a 128^2 grid that intermediate is the largest tensor of the network, and
on CPU the head is memory-bound (it was ~70% of an fno-1m training step).
The fused path walks the grid in tiles small enough to stay in cache, keeps
only the head's input for the backward pass and recomputes the hidden tile
there. Same arithmetic, same result (checked against the plain path in the
tests); the plain path serves GPUs and inference. An ONNX export gets the plain
path with fc1's bias folded into its GEMM (checked by the export parity tests).
"""

from __future__ import annotations

import torch
from torch import nn

from training.layers.pointwise import PointwiseLinear, channel_matmul
from training.layers.tracing import exporting

TILE = 4096  # grid points per tile (fastest of 256..16384 on a 2-core EPYC VM)


class _FusedHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):  # x: (B, C, N)
        ctx.save_for_backward(x, w1, b1, w2, b2)
        out = x.new_empty(x.shape[0], w2.shape[0], x.shape[2])
        for b in range(x.shape[0]):
            for s in range(0, x.shape[2], TILE):
                z = torch.addmm(b1[:, None], w1, x[b, :, s : s + TILE])
                torch.addmm(b2[:, None], w2, nn.functional.gelu(z), out=out[b, :, s : s + TILE])
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w1, b1, w2, b2 = ctx.saved_tensors
        grad = grad.contiguous()
        dx = torch.empty_like(x)
        dw1, db1 = torch.zeros_like(w1), torch.zeros_like(b1)
        dw2, db2 = torch.zeros_like(w2), torch.zeros_like(b2)
        for b in range(x.shape[0]):
            for s in range(0, x.shape[2], TILE):
                xt, gt = x[b, :, s : s + TILE], grad[b, :, s : s + TILE]
                z = torch.addmm(b1[:, None], w1, xt)
                a = nn.functional.gelu(z)
                dw2.addmm_(gt, a.T)
                db2 += gt.sum(dim=1)
                dz = torch.ops.aten.gelu_backward(torch.mm(w2.T, gt), z)
                dw1.addmm_(dz, xt.T)
                db1 += dz.sum(dim=1)
                torch.mm(w1.T, dz, out=dx[b, :, s : s + TILE])
        return dx, dw1, db1, dw2, db2


class ProjectionHead(nn.Module):
    """``fc2(gelu(fc1(x)))`` over the channels of (B, C, n, n) fields."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int):
        super().__init__()
        self.fc1 = PointwiseLinear(in_channels, hidden)
        self.fc2 = PointwiseLinear(hidden, out_channels)
        self.fused = True  # tiles on CPU when training; set False to compare

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if exporting():
            return self._exported(x)
        tiled = (
            self.fused
            and x.device.type == "cpu"
            and torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
            and x.dtype == torch.float32
        )
        if not tiled:
            return self.fc2(nn.functional.gelu(self.fc1(x)))
        b, c, ny, nx = x.shape
        args = (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)
        out = _FusedHead.apply(x.reshape(b, c, ny * nx).contiguous(), *args)
        return out.reshape(b, -1, ny, nx)

    def _exported(self, x: torch.Tensor) -> torch.Tensor:
        """The plain path with fc1's bias as the weight of an added channel of ones.

        ONNX Runtime then adds no bias over the (B, hidden, n, n) tensor, the largest of
        the network: at 128^2 and batch 1 that Add took 0.6 ms of the head's ~3.4.
        """
        weight = torch.cat([self.fc1.weight, self.fc1.bias[:, None]], dim=1)
        with_ones = nn.functional.pad(x, (0, 0, 0, 0, 0, 1), value=1.0)  # one op, no shapes
        return self.fc2(nn.functional.gelu(channel_matmul(weight, with_ones)))
