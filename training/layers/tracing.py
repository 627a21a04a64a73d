"""Whether a module runs to be traced into an ONNX graph rather than eagerly."""

from __future__ import annotations

import torch


def exporting() -> bool:
    """True while torch traces a module for ONNX export: layers then take the graph's order.

    An exported graph runs in ONNX Runtime, whose fastest arrangement of the same
    arithmetic differs from torch eager's (fewer, larger products, no shape
    arithmetic); each layer keeps both and the tests check they agree.
    """
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
