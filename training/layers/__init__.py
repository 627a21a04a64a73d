"""Reusable network layers; models in ``training.models`` are composed from them."""

from training.layers.spectral import SpectralConv2d, truncated_dft

__all__ = ["SpectralConv2d", "truncated_dft"]
