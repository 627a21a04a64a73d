"""The served model: raw source and coefficients in, solution out.

The input layout (``inputs``: ``values``, six coefficient channels over reference
values, or ``physical``, log a, the tensor's shape and v, w in the diffusion's unit:
training/layers/normalization.py), the mixed-operator encoding and the FNO live in
one module, so an exported graph needs nothing but its
card. Coefficients come as (B, 6) scalars or (B, 6, n, n) fields. Constant
channels are never built as images: the lifting layer is linear, so their
contribution is a per-example bias added on the device
(``lift(x) = w_f * f + (W_c c + b)``), and an exported graph goes one step
further and runs the first Fourier block on the source channel alone. Fields
enter the lifting layer as the six image channels they are; a constant field
gives what its scalars give (to rounding).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from datagen.systems import COEFFICIENT_NAMES
from modelstore.registry import INPUT_LAYOUTS
from training.layers.normalization import ENCODINGS, Layout
from training.layers.spectral import at_least_float32
from training.layers.tracing import exporting
from training.models.base import ModelBase
from training.models.fno import FNO2d

N_COEFFICIENTS = len(COEFFICIENT_NAMES)


class PDESurrogate(ModelBase):
    capabilities: ClassVar[dict[str, bool]] = FNO2d.capabilities

    def __init__(
        self,
        width: int,
        modes: int,
        n_layers: int = 4,
        fc_dim: int = 128,
        spectral: str = "dft",
        source_ref: float = 1.0,
        coefficient_ref: list[float] | None = None,
        solution_ref: float = 1.0,
        inputs: Layout = "values",
        unit_ref: float | None = None,
    ):
        super().__init__()
        if inputs not in ENCODINGS:
            raise ValueError(f"unknown input layout {inputs!r}; known: {sorted(ENCODINGS)}")
        encoding = ENCODINGS[inputs]
        coefficient_ref = [1.0] * encoding.n_refs if coefficient_ref is None else coefficient_ref
        if len(coefficient_ref) != encoding.n_refs:
            raise ValueError(f"coefficient_ref needs {encoding.n_refs} values for {inputs!r}")
        if encoding.outputs == 1 and unit_ref is not None:
            raise ValueError("unit_ref belongs to the physical layout")
        if encoding.outputs > 1 and unit_ref is None:
            unit_ref = 1.0
        self.normalize = encoding(source_ref, list(coefficient_ref), solution_ref, unit_ref)
        in_channels = 1 + encoding.channels
        self.fno = FNO2d(in_channels, width, modes, n_layers, fc_dim, encoding.outputs, spectral)

    @property
    def layout_version(self) -> int:
        """The input layout's version (1: values, 2: physical), recorded in the card."""
        return INPUT_LAYOUTS[self.init_args["inputs"]]

    def set_spectral_path(self, path: str) -> None:
        self.fno.set_spectral_path(path)

    def forward(self, source: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        """source (B, n, n), coefficients (B, 6) or (B, 6, n, n) in the unified layout ->
        solution (B, n, n)."""
        fields = coefficients.dim() == 4
        if (
            not exporting()
            and (  # a traced graph's shapes are symbolic: checked by ORT
                source.dim() != 3
                or coefficients.dim() not in (2, 4)
                or coefficients.shape[1] != N_COEFFICIENTS
                or (fields and coefficients.shape[2:] != source.shape[1:])
            )
        ):
            raise ValueError(
                "expected source (B, n, n) and coefficients (B, 6) or (B, 6, n, n) on the "
                f"source's grid, got {tuple(source.shape)} and {tuple(coefficients.shape)}"
            )
        f, c, units = self.normalize(source, coefficients)
        lift = self.fno.lift
        if fields:  # every channel is an image
            u = self.fno.trunk(lift(torch.cat([f[:, None], c], dim=1)))
        else:
            # (B, 1, n, n) * (width, 1, 1) + (B, width, 1, 1): the constant channels as a bias.
            bias = torch.nn.functional.linear(c, lift.weight[:, 1:], lift.bias)
            if exporting():  # the first block on the source alone: ~8% of batch-1 graph time
                u = self.fno.graph_trunk_rank_one(f, lift.weight[:, 0], bias)
            else:
                h = f[:, None] * lift.weight[:, 0, None, None] + bias[:, :, None, None]
                u = self.fno.trunk(h)
        # Each output channel in its unit (layout 2: the values unit and the physical one).
        return (at_least_float32(u) * units[:, :, None, None]).sum(dim=1)
