"""A published model's error on a dataset file: what export writes into the card and
``pdeserve eval`` prints, named per band as :mod:`modelstore.bands` reads them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from datagen.coefficients import broadcast_fields
from datagen.dataset import open_dataset
from datagen.solver import relative_l2
from modelstore.bands import band_key
from modelstore.runner import OnnxSurrogate


def evaluate(model: OnnxSurrogate, path: str, batch: int = 32, progress: bool = True) -> dict:
    """Mean relative L2 of the model on a dataset file, overall and for its system. A file
    with coefficient fields needs the model's fields graph (``OnnxSurrogate.load(...,
    fields=True)``; :func:`has_fields` tells)."""
    with open_dataset(path) as reader:
        if reader.has_fields and not model.fields:
            raise ValueError(
                f"{Path(path).name} has coefficient fields: evaluate it with the model's "
                "fields graph"
            )
        errors = []
        bar = tqdm(total=len(reader), unit="ex", desc="eval", disable=not progress)
        for chunk in reader.chunks(256):
            coefficients = chunk.unified()
            if model.fields and coefficients.ndim == 2:  # constant data, fields graph
                coefficients = broadcast_fields(coefficients, chunk.sources.shape[-1])
            pred = model.predict(chunk.sources, coefficients, batch)
            errors.append(relative_l2(pred, chunk.solutions))
            bar.update(len(pred))
        bar.close()
        err = np.concatenate(errors)
        name = reader.system.name  # field files by law and range: poisson-smooth(1,10)
        if reader.has_fields:
            law = str(reader.attrs.get("field_law", "fields"))
            span = reader.attrs.get("contrast_range", reader.attrs.get("variation_range"))
            name = band_key(name, law, None if span is None else (span[0], span[1]))
            if span is None:
                name = f"{reader.system.name}-{law}"
        return {
            "mean_relative_l2": float(err.mean()),
            "per_system": {name: float(err.mean())},
            "n": int(err.size),
        }


def has_fields(path: str) -> bool:
    """Whether a dataset file holds coefficient fields."""
    with open_dataset(path) as reader:
        return reader.has_fields
