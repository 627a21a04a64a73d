"""Named model sizes: the paper's ladder (appendix A.2), ~16x parameters per step."""

from __future__ import annotations

from typing import Any

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "fno-64k": {"width": 16, "modes": 4},
    "fno-1m": {"width": 16, "modes": 16},
    "fno-16m": {"width": 32, "modes": 32},
    "fno-256m": {"width": 128, "modes": 32},
}

#: The parameter count each preset's name promises.
NOMINAL_PARAMETERS: dict[str, int] = {
    "fno-64k": 64_000,
    "fno-1m": 1_000_000,
    "fno-16m": 16_000_000,
    "fno-256m": 256_000_000,
}


def preset(name: str) -> dict[str, Any]:
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(MODEL_PRESETS)}")
    return dict(MODEL_PRESETS[name])
