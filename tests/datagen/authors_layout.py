"""Test helper: dataset files in the paper authors' layout (pdeserve reads them, never
writes them)."""

import contextlib
import os
import uuid
from pathlib import Path

import h5py
import numpy as np

from datagen.systems import System, get_system


def write_authors_file(
    path: str | os.PathLike,
    system: str | System,
    sources: np.ndarray,
    solutions: np.ndarray,
    coefficients: np.ndarray,
    psi: np.ndarray | None = None,
) -> Path:
    """Write arrays in the authors' layout: ``fields``, ``tensor`` (and ``other``), nothing else."""
    system = get_system(system)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("fields", data=np.stack([sources, solutions], axis=1).astype("<f4"))
            f.create_dataset("tensor", data=system.from_unified(coefficients).astype("<f4"))
            if psi is not None:
                f.create_dataset("other", data=np.asarray(psi, dtype="<f4").reshape(-1, 1))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path
