"""Model directories and training-state checkpoints, written atomically.

A model directory holds ``weights.safetensors`` and ``card.json`` (the model's
class and constructor arguments, normalisation statistics included, plus any
metadata the caller adds). A training checkpoint adds ``state.pt`` (optimiser,
schedule, epoch, random states) saved from tensors and plain values only, so
it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from training.models.base import ModelBase, build_model

WEIGHTS = "weights.safetensors"
CARD = "card.json"
STATE = "state.pt"
CARD_FORMAT = "pdeserve-model"


def write_json(path: Path, data: Any) -> None:
    """Write JSON to a temporary name, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written directory into place; the old one goes only after."""
    old = final.with_name(f".{final.name}.{uuid.uuid4().hex}.old")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _staging(final: Path) -> Path:
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir(parents=True)
    return tmp


def write_model_files(model: ModelBase, directory: Path, metadata: dict | None = None) -> None:
    """Write weights and card into an existing directory (no atomicity of its own)."""
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(directory / WEIGHTS))
    card = {"format": CARD_FORMAT, "model": model.card(), **(metadata or {})}
    write_json(directory / CARD, card)


def save_model(
    model: ModelBase, directory: str | os.PathLike, metadata: dict | None = None
) -> Path:
    """Write a model directory atomically; ``metadata`` joins the card."""
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _staging(final)
    try:
        write_model_files(model, tmp, metadata)
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_card(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / CARD
    if not path.exists():
        raise FileNotFoundError(f"no model card at {path}")
    card = json.loads(path.read_text())
    if card.get("format") != CARD_FORMAT:
        raise ValueError(f"{path} is not a pdeserve model card")
    return card


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu") -> ModelBase:
    """Rebuild the model from its card and load its weights (no pickle involved)."""
    directory = Path(directory)
    model = build_model(read_card(directory)["model"])
    model.load_state_dict(load_file(str(directory / WEIGHTS), device=str(device)))
    return model.to(device)


def save_state(state: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=True)
