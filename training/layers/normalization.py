"""Per-instance input normalisation of the paper (appendix A.5), as a layer.

Each example's source and coefficients (scalars or fields) are divided by
``s = rms(f) / source_ref`` (so scaling f and the coefficients together
changes nothing: the solution of a linear PDE is unchanged by it), then the
coefficients by per-channel reference values. The solution is predicted in
units of ``solution_ref``.
"""

from __future__ import annotations

import torch
from torch import nn

from training.layers.spectral import at_least_float32


def rms(fields: torch.Tensor) -> torch.Tensor:
    """Discrete L2 norm on the unit square, sqrt(mean(f^2)), per example of (B, n, n)."""
    return at_least_float32(fields).square().mean(dim=(-2, -1)).sqrt()


class InputNormalization(nn.Module):
    def __init__(self, source_ref: float, coefficient_ref: list[float], solution_ref: float):
        super().__init__()
        if source_ref <= 0 or solution_ref <= 0 or min(coefficient_ref) <= 0:
            raise ValueError("normalisation references must be > 0")
        self.register_buffer("source_ref", torch.tensor(float(source_ref)), persistent=False)
        self.register_buffer(
            "coefficient_ref", torch.tensor(coefficient_ref, dtype=torch.float32), persistent=False
        )
        self.register_buffer("solution_ref", torch.tensor(float(solution_ref)), persistent=False)

    def forward(
        self, source: torch.Tensor, coefficients: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, n, n), (B, 6) or (B, 6, n, n) -> normalised source, normalised coefficients
        (scalars or fields alike), nonzero-source mask."""
        norm = rms(source)
        nonzero = norm > 0
        scale = torch.where(nonzero, norm / self.source_ref, torch.ones_like(norm))
        source = at_least_float32(source) / scale[:, None, None]
        grid = (1,) * (coefficients.dim() - 2)  # () for scalars, (1, 1) for fields
        coefficients = at_least_float32(coefficients) / scale.view(-1, 1, *grid)
        return source, coefficients / self.coefficient_ref.view(-1, *grid), nonzero
