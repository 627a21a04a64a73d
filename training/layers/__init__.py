"""Reusable network layers; models in ``training.models`` are composed from them."""

from training.layers.spectral import SpectralConv2d, truncated_rfft2

__all__ = ["SpectralConv2d", "truncated_rfft2"]
