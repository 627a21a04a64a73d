"""The model's input layouts: what the network sees of a source and its coefficients.

Both layouts use the linearity of the PDEs: scaling f and every coefficient by the same
factor leaves u unchanged, so nothing depends on the caller's units.

``values`` (layout 1, the paper's appendix A.5; default@2 and earlier): each example's
source and coefficients (scalars or fields) are divided by ``s = rms(f) / source_ref``,
then the coefficients by per-channel reference values; the solution is predicted in
units of ``solution_ref``. Six coefficient channels, the unified layout.

``physical`` (layout 2): layout 1's channels and the coefficients as the physics reads
them. With ``det K(x)`` the diffusion tensor's determinant and
``r = exp(mean(log sqrt(det K)))`` (sqrt(det K_ref) of the log-Euclidean mean K_ref):

- ``log a = log sqrt(det K(x)) - log r``: the log-conductivity, zero for constants;
- ``K(x) / sqrt(det K(x))``: the tensor's shape (unit determinant), three channels;
- ``v / r`` and ``w / r``: advection and reaction in the diffusion's unit;

thirteen coefficient channels in all, and a second output channel in the physical unit
``rms(f) / r`` (times ``unit_ref``) added to the first. ``coefficient_ref`` holds twelve
scales: layout 1's six, then the shape's, v / r's and w / r's; log a enters as it is.
Layout 1 is layout 2 with the new lifting columns and the new output at zero, so a
layout-1 model starts a layout-2 one exactly (``training.trainer.warm_start``).
bench/inputs.py measured log a with the physical unit at -47% error against layout 1
(Darcy, paired runs from scratch).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from training.layers.spectral import at_least_float32

#: Input layouts by name (the versions cards record: modelstore.registry.INPUT_LAYOUTS).
Layout = Literal["values", "physical"]


def rms(fields: torch.Tensor) -> torch.Tensor:
    """Discrete L2 norm on the unit square, sqrt(mean(f^2)), per example of (B, n, n)."""
    return at_least_float32(fields).square().mean(dim=(-2, -1)).sqrt()


class _Encoding(nn.Module):
    """References as float32 buffers; ``forward`` gives the network's inputs and, per
    output channel, the unit it is multiplied by (0 where the source is zero)."""

    #: Coefficient channels the network's lifting layer takes, and its output channels.
    channels: int
    outputs: int

    def __init__(
        self,
        source_ref: float,
        coefficient_ref: list[float],
        solution_ref: float,
        unit_ref: float | None = None,
    ):
        super().__init__()
        if source_ref <= 0 or solution_ref <= 0 or min(coefficient_ref) <= 0:
            raise ValueError("normalisation references must be > 0")
        self.register_buffer("source_ref", torch.tensor(float(source_ref)), persistent=False)
        self.register_buffer(
            "coefficient_ref", torch.tensor(coefficient_ref, dtype=torch.float32), persistent=False
        )
        self.register_buffer("solution_ref", torch.tensor(float(solution_ref)), persistent=False)
        if unit_ref is not None:
            self.register_buffer("unit_ref", torch.tensor(float(unit_ref)), persistent=False)

    def forward(
        self, source: torch.Tensor, coefficients: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, n, n), (B, 6) or (B, 6, n, n) -> source channel, coefficient channels
        (scalars or fields alike), output units (B, outputs)."""
        raise NotImplementedError


class InputNormalization(_Encoding):
    """Layout 1 (``values``)."""

    channels, outputs = 6, 1
    n_refs = 6

    def forward(self, source, coefficients):
        norm = rms(source)
        nonzero = norm > 0
        scale = torch.where(nonzero, norm / self.source_ref, torch.ones_like(norm))
        source = at_least_float32(source) / scale[:, None, None]
        grid = (1,) * (coefficients.dim() - 2)  # () for scalars, (1, 1) for fields
        coefficients = at_least_float32(coefficients) / scale.view(-1, 1, *grid)
        refs = self.coefficient_ref[:6].view(-1, *grid)
        return source, coefficients / refs, (self.solution_ref * nonzero)[:, None]


def physical_channels(
    source: torch.Tensor, coefficients: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Layout 2's own channels before their reference scales: [log a, K / sqrt(det K)
    (k11, k22, k12), v1 / r, v2 / r, w / r] (B, 7[, n, n]) and the unit rms(f) / r (B,)."""
    c = at_least_float32(coefficients)
    half_log_det = 0.5 * torch.log(c[:, 0] * c[:, 1] - c[:, 2] * c[:, 2])
    fields = c.dim() == 4
    log_r = half_log_det.mean(dim=(-2, -1)) if fields else half_log_det
    grid = (1, 1) if fields else ()
    log_a = half_log_det - log_r.view(-1, *grid) if fields else torch.zeros_like(log_r)
    shape = c[:, :3] * torch.exp(-half_log_det)[:, None]
    rest = c[:, 3:] * torch.exp(-log_r).view(-1, 1, *grid)
    channels = torch.cat([log_a[:, None], shape, rest], dim=1)
    return channels, rms(source) * torch.exp(-log_r)


class PhysicalInputs(InputNormalization):
    """Layout 2 (``physical``): see the module docstring."""

    channels, outputs = 13, 2
    n_refs = 12

    def forward(self, source, coefficients):
        f, values, units = super().forward(source, coefficients)
        channels, unit = physical_channels(source, coefficients)
        grid = (1,) * (coefficients.dim() - 2)
        refs = torch.cat([torch.ones_like(self.coefficient_ref[:1]), self.coefficient_ref[6:]])
        coefficients = torch.cat([values, channels / refs.view(-1, *grid)], dim=1)
        return f, coefficients, torch.stack([units[:, 0], unit * self.unit_ref], dim=1)


ENCODINGS: dict[str, type[_Encoding]] = {"values": InputNormalization, "physical": PhysicalInputs}
