"""Batch emulation: a dataset's sources through the service, predictions to HDF5, resumable.

The output is pdeserve's dataset layout: ``fields`` (N, 2, n, n) = [source, predicted
solution], the input's coefficients (``coefficients`` unified, ``tensor``, for
advection-diffusion ``other``, and for field datasets ``coefficient_fields``), every
surrogate answer's ``error_estimate`` (N,) (NaN for exact ones), with ``validate`` a
``relative_l2`` (N,) dataset, and ``answered`` (N,): the mode that answered each example
(an example outside the model's envelope falls back to ``exact``; :func:`summary` counts
them and says why, in the service's words).
While it runs the file is ``OUTPUT.partial`` with a ``done`` flag per example, set once
the server batch that carried it (``batch_size`` examples) is on disk: an interrupt loses
at most the batches in flight. A restart continues with the examples not yet done, with
any batch size and concurrency, and the file is renamed to OUTPUT when the last one
lands. The settings that change the answers (the input, mode, tolerance and
iterations) must be those the file was started with. Client-side only: numpy, h5py, httpx.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from datagen.dataset import FORMAT, FORMAT_VERSION, open_dataset
from service.client import BatchResult, Client, progress_bar

MODES = ("surrogate", "validate", "exact", "refine", "auto")
#: Server batches read from the input at a time, per request in flight.
READ_AHEAD = 4
#: What an emulation is started with, as recorded in the partial file: the command-line
#: flag that sets it.
SETTINGS = {
    "emulate_input": "--input",
    "emulate_n": "--input",
    "emulate_resolution": "--input",
    "system": "--pde",
    "emulate_mode": "--mode",
    "emulate_tolerance": "--tolerance",
    "emulate_max_iterations": "--max-iterations",
}


class EmulationError(ValueError):
    """An output file that belongs to another emulation, or bad arguments."""


def partial_path(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def _describe(reader, mode: str, tolerance: float | None, max_iterations: int | None) -> dict:
    """The settings an emulation is started with (None: the service's default, "")."""
    return {
        "emulate_input": str(Path(reader.path).resolve()),
        "emulate_n": len(reader),
        "emulate_resolution": reader.resolution,
        "system": reader.system.name,
        "emulate_mode": mode,
        "emulate_tolerance": "" if tolerance is None else repr(float(tolerance)),
        "emulate_max_iterations": "" if max_iterations is None else int(max_iterations),
    }


def _shown(key: str, value) -> str:
    """A recorded setting as the user gave it."""
    text = str(value.item() if isinstance(value, np.generic) else value)
    if key == "emulate_n":
        return f"{text} examples"
    if key == "emulate_resolution":
        return f"a {text}^2 grid"
    return text or "(default)"


def _mismatch(partial: Path, have: dict, want: dict) -> str | None:
    """Which flags differ from the run ``partial`` holds, in the user's terms; None if
    none do."""
    if any(k not in have or have[k] is None for k in want):
        return (
            f"{partial} was not written by this version of pdeserve emulate: delete it to "
            "start over"
        )
    differ = [k for k in want if _shown(k, have[k]) != _shown(k, want[k])]
    if not differ:
        return None
    lines = [
        f"  {SETTINGS[k]}: the run used {_shown(k, have[k])}, now {_shown(k, want[k])}"
        for k in differ
    ]
    flags = sorted({SETTINGS[k] for k in differ})
    return (
        f"{partial} holds an emulation started with other settings:\n"
        + "\n".join(lines)
        + f"\nRepeat {', '.join(flags)} as they were to continue it, or delete {partial} to "
        "start over."
    )


def _create(path: Path, reader, settings: dict, url: str) -> None:
    n, res = len(reader), reader.resolution
    coefficients = reader.coefficients()
    tmp = path.with_name(path.name + ".new")
    with h5py.File(tmp, "w") as f:
        f.attrs.update(settings)
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
        if settings["emulate_mode"] == "validate":
            f.create_dataset("relative_l2", (n,), dtype="f8", fillvalue=np.nan)
        _answered(f, n)
        f.create_dataset("done", (n,), dtype="u1")  # per example
    os.replace(tmp, path)


def _answered(f: h5py.File, n: int) -> h5py.Dataset:
    """The per-example record of the mode that answered (created where a partial file
    from before it has none)."""
    if "answered" not in f:
        f.create_dataset("answered", (n,), dtype=h5py.string_dtype())
    return f["answered"]


def summary(path: str | os.PathLike) -> str:
    """What answered an emulation's examples, and why where it is not the mode asked:
    '256 examples: exact 254, surrogate 2; 254 not by the surrogate asked: e.g. ...'."""
    with h5py.File(path, "r") as f:
        asked = str(f.attrs["emulate_mode"])
        answered = [a.decode() if isinstance(a, bytes) else str(a) for a in f["answered"][()]]
        reason = str(f.attrs.get("emulate_reason", ""))
    counts: dict[str, int] = {}
    for mode in answered:
        counts[mode] = counts.get(mode, 0) + 1
    shown = ", ".join(f"{m} {c}" for m, c in sorted(counts.items(), key=lambda kv: -kv[1]))
    line = f"{len(answered)} examples answered: {shown}"
    other = len(answered) - counts.get(asked, 0)
    if asked != "auto" and other:
        line += f"; {other} not by the {asked} mode asked" + (f", e.g.: {reason}" if reason else "")
    return line


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
    progress: bool = True,
) -> Path:
    """Run every example of ``input_path`` through the service into ``output_path``
    (constant or field datasets; ``tolerance`` and ``max_iterations`` as in ``solve``).
    Each server batch of ``batch_size`` examples is kept as it arrives."""
    if mode not in MODES:
        raise EmulationError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if batch_size < 1 or concurrency < 1:
        raise EmulationError(
            f"--batch-size and --concurrency must be >= 1, got {batch_size} and {concurrency}"
        )
    output = Path(output_path)
    if output.exists():
        raise EmulationError(f"{output} exists and is complete; choose another output path")
    partial = partial_path(output)
    with open_dataset(input_path, pde) as reader:
        want = _describe(reader, mode, tolerance, max_iterations)
        if partial.exists():
            with h5py.File(partial, "r") as f:
                have = {k: f.attrs.get(k) for k in want}
                problem = _mismatch(partial, have, want)
                if problem is None and f["done"].shape != (len(reader),):
                    problem = _mismatch(partial, {}, want)  # an older layout
            if problem:
                raise EmulationError(problem)
        else:
            _create(partial, reader, want, client.url)
        with h5py.File(partial, "r+") as f:
            pending = np.flatnonzero(f["done"][()] == 0)
            initial = len(reader) - pending.size
            bar = progress_bar(len(reader), progress, "emulate", "example", initial)
            try:
                for start, stop in _windows(pending, batch_size * concurrency * READ_AHEAD):
                    part = reader.read(start, stop)

                    def keep(batch: slice, result: BatchResult, part=part, start=start) -> None:
                        _write(f, part, batch, result, start, mode)
                        if bar is not None:
                            bar.update(batch.stop - batch.start)

                    client.solve_batch(
                        reader.system.name,
                        part.sources,
                        part.unified(),
                        mode=mode,
                        tolerance=tolerance,
                        max_iterations=max_iterations,
                        batch_size=batch_size,
                        concurrency=concurrency,
                        progress=False,
                        on_chunk=keep,
                    )
            finally:
                if bar is not None:
                    bar.close()
    os.replace(partial, output)
    return output


def _windows(pending: np.ndarray, size: int) -> Iterator[tuple[int, int]]:
    """[start, stop) runs of consecutive pending examples, at most ``size`` long."""
    if pending.size == 0:
        return
    breaks = np.flatnonzero(np.diff(pending) != 1) + 1
    for run in np.split(pending, breaks):
        for lo in range(0, run.size, size):
            piece = run[lo : lo + size]
            yield int(piece[0]), int(piece[-1]) + 1


def _write(f: h5py.File, part, batch: slice, result: BatchResult, start: int, mode: str) -> None:
    """One server batch of ``part`` (which begins at example ``start``) into the file; its
    examples are marked done only once their data is on disk."""
    rows = slice(start + batch.start, start + batch.stop)
    f["fields"][rows, 0] = part.sources[batch]
    f["fields"][rows, 1] = result.solutions
    f["error_estimate"][rows] = result.error_estimates
    if part.coefficient_fields is not None:
        f["coefficient_fields"][rows] = part.coefficient_fields[batch]
    if mode == "validate":
        f["relative_l2"][rows] = result.relative_l2
    _answered(f, len(f["done"]))[rows] = result.modes
    if "emulate_reason" not in f.attrs:
        why = next((r.reason for r in result.results if r.mode != mode and r.reason), None)
        if why:
            f.attrs["emulate_reason"] = why
    models = {r.model for r in result.results if r.model}
    if models:
        known = set(filter(None, str(f.attrs.get("emulate_models", "")).split(",")))
        f.attrs["emulate_models"] = ",".join(sorted(known | models))
    f.flush()
    f["done"][rows] = 1
    f.flush()
