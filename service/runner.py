"""Runs a published model in ONNX Runtime: no torch, no pickle, checksums verified."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from datagen.resample import resample
from service.registry import (
    CARD,
    DEFAULT_REGISTRY,
    ONNX,
    ModelCard,
    Registry,
    RegistryError,
    sha256_bytes,
)

#: The name served by default.
DEFAULT_MODEL = os.environ.get("PDESERVE_MODEL", "default")


def read_model_dir(directory: Path) -> tuple[ModelCard, dict[str, bytes]]:
    """A published version copied to a folder: the card and its files, checksums verified."""
    card = ModelCard.model_validate_json((directory / CARD).read_bytes())
    files = {}
    for name, digest in card.files.items():
        data = (directory / name).read_bytes()
        if sha256_bytes(data) != digest:
            raise RegistryError(f"{directory / name} does not match its checksum in the card")
        files[name] = data
    return card, files


def locate(
    model: str | None, registry: str = DEFAULT_REGISTRY
) -> tuple[ModelCard, dict[str, bytes]]:
    """``model``: a folder holding card.json, or NAME[@VERSION] in ``registry`` (or the default)."""
    ref = model or DEFAULT_MODEL
    if Path(ref).is_dir():
        return read_model_dir(Path(ref))
    try:
        return Registry(registry).read_files(ref)
    except RegistryError as e:
        if model is None:
            raise RegistryError(
                f"no default model {ref!r} in {registry}: pass --model ({e})"
            ) from None
        raise


class OnnxSurrogate:
    """source (B, n, n), coefficients (B, 6) -> solution (B, n, n), in batches."""

    def __init__(self, card: ModelCard, onnx_bytes: bytes, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle pool threads sleep instead of spinning: a replica shares its cores with the
        # HTTP proxy and the ingress (spinning bought no speed when measured).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.card = card
        providers = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        # onnxruntime-gpu lists CUDA even where its libraries are missing and logs an
        # error as it falls back to the CPU: ask quietly, report what was granted.
        ort.set_default_logger_severity(4)
        try:
            self.session = ort.InferenceSession(onnx_bytes, options, providers=providers)
        finally:
            ort.set_default_logger_severity(2)
        self.providers = self.session.get_providers()

    @classmethod
    def load(cls, model: str | None = None, registry: str = DEFAULT_REGISTRY) -> OnnxSurrogate:
        card, files = locate(model, registry)
        if ONNX not in files:
            raise RegistryError(f"{card.ref} has no {ONNX}")
        return cls(card, files[ONNX])

    def predict(self, source: np.ndarray, coefficients: np.ndarray, batch: int = 32) -> np.ndarray:
        """Solutions on the sources' grid; another grid than the model's is resampled
        spectrally to it and back (exact for fields band-limited below both Nyquists)."""
        n, grid = source.shape[-1], self.card.resolution or source.shape[-1]
        if grid != n:
            source = resample(source, grid)
        source = np.asarray(source, dtype=np.float32)
        coefficients = np.asarray(coefficients, dtype=np.float32)
        solution = np.concatenate(list(self._batches(source, coefficients, batch)))
        return solution if grid == n else resample(solution, n).astype(np.float32)

    def _batches(self, source, coefficients, batch) -> Iterator[np.ndarray]:
        for i in range(0, len(source), batch):
            feed = {"source": source[i : i + batch], "coefficients": coefficients[i : i + batch]}
            yield self.session.run(None, feed)[0]
