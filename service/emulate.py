"""Batch emulation: a dataset's sources through the service, predictions to HDF5, resumable.

The output is pdeserve's dataset layout: ``fields`` (N, 2, n, n) = [source, predicted
solution], the input's coefficients (``coefficients`` unified, ``tensor``, for
advection-diffusion ``other``, and for field datasets ``coefficient_fields``), every
surrogate answer's ``error_estimate`` (N,) (NaN for exact ones), and with ``validate`` a
``relative_l2`` (N,) dataset.
While it runs the file is ``OUTPUT.partial`` with a ``done`` flag per chunk, flushed
after the chunk's data; a restart continues with the chunks not yet done and the file
is renamed to OUTPUT when the last one lands. Client-side only: numpy, h5py, httpx.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from datagen.dataset import FORMAT, FORMAT_VERSION, open_dataset
from service.client import Client, progress_bar

MODES = ("surrogate", "validate", "exact", "refine", "auto")


class EmulationError(ValueError):
    """An output file that belongs to another emulation, or bad arguments."""


def partial_path(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def _describe(reader, mode: str, chunk: int) -> dict:
    return {
        "emulate_input": str(Path(reader.path).resolve()),
        "emulate_n": len(reader),
        "emulate_resolution": reader.resolution,
        "emulate_mode": mode,
        "emulate_chunk": chunk,
        "system": reader.system.name,
    }


def _create(path: Path, reader, mode: str, chunk: int, url: str) -> None:
    n, res = len(reader), reader.resolution
    coefficients = reader.coefficients()
    tmp = path.with_name(path.name + ".new")
    with h5py.File(tmp, "w") as f:
        f.attrs.update(_describe(reader, mode, chunk))
        f.attrs.update(format=FORMAT, format_version=FORMAT_VERSION, emulate_url=url)
        f.create_dataset("fields", (n, 2, res, res), dtype="f4")
        f.create_dataset("coefficients", data=coefficients)
        f.create_dataset("tensor", data=reader.system.from_unified(coefficients).astype("f4"))
        psi = reader.psi()
        if psi is not None:
            f.create_dataset("other", data=psi[:, None].astype("f4"))
        if reader.has_fields:
            fields = f.create_dataset(
                "coefficient_fields", reader.coefficient_fields.shape, dtype="f4"
            )
            fields.attrs["columns"] = list(reader.field_columns)
        f.create_dataset("error_estimate", (n,), dtype="f8", fillvalue=np.nan)
        if mode == "validate":
            f.create_dataset("relative_l2", (n,), dtype="f8", fillvalue=np.nan)
        f.create_dataset("done", (-(-n // chunk),), dtype="u1")
    os.replace(tmp, path)


def emulate(
    client: Client,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    pde: str | None = None,
    mode: str = "surrogate",
    tolerance: float | None = None,
    max_iterations: int | None = None,
    batch_size: int = 32,
    concurrency: int = 4,
    chunk: int | None = None,
    progress: bool = True,
) -> Path:
    """Run every example of ``input_path`` through the service into ``output_path``
    (constant or field datasets; ``tolerance`` and ``max_iterations`` as in ``solve``)."""
    if mode not in MODES:
        raise EmulationError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    output = Path(output_path)
    if output.exists():
        raise EmulationError(f"{output} exists and is complete; choose another output path")
    chunk = chunk or batch_size * concurrency
    partial = partial_path(output)
    with open_dataset(input_path, pde) as reader:
        if partial.exists():
            with h5py.File(partial, "r") as f:
                have = {k: f.attrs.get(k) for k in _describe(reader, mode, chunk)}
            want = _describe(reader, mode, chunk)
            if {k: str(v) for k, v in have.items()} != {k: str(v) for k, v in want.items()}:
                raise EmulationError(
                    f"{partial} was started with other settings ({have}); now asked for "
                    f"{want}: remove it or use the same arguments"
                )
        else:
            _create(partial, reader, mode, chunk, client.url)
        with h5py.File(partial, "r+") as f:
            done = f["done"]
            todo = [i for i in range(len(done)) if not done[i]]
            initial = len(reader) - _remaining(todo, chunk, len(reader))
            bar = progress_bar(len(reader), progress, "emulate", "example", initial)
            for i in todo:
                start, stop = i * chunk, min(len(reader), (i + 1) * chunk)
                part = reader.read(start, stop)
                result = client.solve_batch(
                    reader.system.name,
                    part.sources,
                    part.unified(),
                    mode=mode,
                    tolerance=tolerance,
                    max_iterations=max_iterations,
                    batch_size=batch_size,
                    concurrency=concurrency,
                    progress=False,
                )
                f["fields"][start:stop, 0] = part.sources
                f["fields"][start:stop, 1] = result.solutions
                f["error_estimate"][start:stop] = result.error_estimates
                if part.coefficient_fields is not None:
                    f["coefficient_fields"][start:stop] = part.coefficient_fields
                if mode == "validate":
                    f["relative_l2"][start:stop] = result.relative_l2
                models = {r.model for r in result.results if r.model}
                if models:
                    f.attrs["emulate_models"] = ",".join(sorted(models))
                f.flush()
                done[i] = 1  # only after the chunk's data is on disk
                f.flush()
                if bar is not None:
                    bar.update(stop - start)
            if bar is not None:
                bar.close()
    os.replace(partial, output)
    return output


def _remaining(todo: list[int], chunk: int, n: int) -> int:
    return sum(min(n, (i + 1) * chunk) - i * chunk for i in todo)
