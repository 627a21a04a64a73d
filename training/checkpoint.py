"""Model directories and training-state checkpoints, written atomically.

A model directory holds ``weights.safetensors`` and ``card.json``, the
registry's ``ModelCard`` (class and constructor arguments, normalisation
statistics, lineage, metrics, the weights' SHA-256), so a published model and
a checkpoint describe themselves the same way. A training checkpoint adds ``state.pt`` (optimiser,
schedule, epoch, random states) saved from tensors and plain values only, so
it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save

from modelstore.registry import (
    CARD,
    WEIGHTS,
    Architecture,
    Envelope,
    ModelCard,
    Normalization,
    checked_files,
    sha256_bytes,
)
from training.models.base import ModelBase, build_model

STATE = "state.pt"


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


def model_card(model: ModelBase, metadata: dict | None = None) -> ModelCard:
    """The registry's card for a trained model: ``metadata`` may hold ``data`` (the
    lineage, with ``resolution`` and ``envelope``), ``metrics`` and other lineage keys."""
    meta = dict(metadata or {})
    data = dict(meta.pop("data", {}))
    envelope = data.pop("envelope", {})
    metrics = meta.pop("metrics", {})
    meta.pop("normalization", None)  # the model's own arguments are the source
    args = model.init_args  # the statistics as computed (the buffers are float32 copies)
    return ModelCard(
        model=Architecture.model_validate(model.card()),
        normalization=Normalization(
            source_ref=args["source_ref"],
            coefficient_ref=args["coefficient_ref"] or model.normalize.coefficient_ref.tolist(),
            solution_ref=args["solution_ref"],
            unit_ref=args.get("unit_ref"),
        ),
        inputs=getattr(model, "layout_version", 1),
        resolution=data.get("resolution"),
        envelope={k: Envelope(**v) for k, v in envelope.items()},
        lineage={**data, **meta},
        metrics={k: float(v) for k, v in metrics.items()},
    )


def weights_bytes(model: torch.nn.Module) -> bytes:
    """The model's state as safetensors bytes (what ``weights.safetensors`` holds)."""
    return save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})


def write_model_files(model: ModelBase, directory: Path, metadata: dict | None = None) -> None:
    """Write weights and card into an existing directory (no atomicity of its own)."""
    (directory / WEIGHTS).write_bytes(weights_bytes(model))
    digest = sha256_bytes((directory / WEIGHTS).read_bytes())
    card = model_card(model, metadata).model_copy(update={"files": {WEIGHTS: digest}})
    tmp = directory / f".{CARD}.tmp"
    tmp.write_text(card.model_dump_json(indent=2, by_alias=True))
    os.replace(tmp, directory / CARD)


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


def read_card(directory: str | os.PathLike) -> ModelCard:
    path = Path(directory) / CARD
    if not path.exists():
        raise FileNotFoundError(f"no model card at {path}")
    try:
        return ModelCard.model_validate_json(path.read_bytes())
    except ValueError as e:
        raise ValueError(f"{path} is not a pdeserve model card: {e}") from None


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu") -> ModelBase:
    """Rebuild the model from its card and load its weights (checked; no pickle involved)."""
    directory = Path(directory)
    card = read_card(directory)
    # the weights alone: a published card also lists graphs this folder need not hold
    if WEIGHTS in card.files:
        weights = card.model_copy(update={"files": {WEIGHTS: card.files[WEIGHTS]}})
        read = lambda name: (directory / name).read_bytes()  # noqa: E731
        data = checked_files(weights, read, str(directory))[WEIGHTS]
    else:
        data = (directory / WEIGHTS).read_bytes()
    model = build_model(card.model.model_dump(by_alias=True))
    model.load_state_dict(load(data))
    return model.to(device)


def save_state(state: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=True)
