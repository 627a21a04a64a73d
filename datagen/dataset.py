"""HDF5 dataset files: pdeserve's and the authors' layout.

Both layouts hold ``fields`` float32 (N, 2, n, n) = [source, solution] and
``tensor`` float32 (N, C) with the system's columns (advection-diffusion adds
``other`` (N, 1) = Psi), so the authors' loader reads pdeserve files.
pdeserve adds ``coefficients`` float64 (N, 6) (unified), ``sparsity`` (N,),
``psi`` (a link to ``other``) and attributes describing how the file was made.

Files with coefficient fields add ``coefficient_fields`` float32 (N, F, n, n)
holding only the coefficients that vary (attribute ``columns``: their unified
names, e.g. k11, k22, k12 or w); ``coefficients`` and ``tensor`` then hold
their reference values (:func:`datagen.coefficients.reference`), and
per-example arrays describe the law's draws and the solves (``contrast`` or
``variation``, ``length``, ``iterations``, ``relative_residual``, and
``psi_field`` for advection-diffusion). :meth:`Chunk.unified` puts the
pieces back together as the solver's (B, 6, n, n) layout.

Files are written block by block into a contiguous dataset (a 40,960-example
file at 128^2 is 5 GB and never sits in memory) under a temporary name that is
renamed when complete.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from datagen.coefficients import COEFFICIENT_NAMES, with_fields
from datagen.systems import System, get_system, system_for_tensor_width

FORMAT = "pdeserve-dataset"
FORMAT_VERSION = 1
#: Per-example arrays of field files (see :func:`datagen.generate.extra_columns`): dtypes.
PER_EXAMPLE: dict[str, str] = {
    "contrast": "<f4",
    "variation": "<f4",
    "length": "<f4",
    "iterations": "<i4",
    "relative_residual": "<f4",
    "psi_field": "<f4",
}


def code_version() -> str:
    from datagen import __version__

    return f"pdeserve {__version__}"


class DatasetWriter:
    """Writes one dataset file; use as a context manager.

    The file is created as ``<path>.<random>.tmp`` and renamed to ``path`` by
    :meth:`commit` (called on a clean exit of the ``with`` block); on an
    exception the temporary file is removed, so ``path`` is either absent or
    complete.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        system: str | System,
        n_examples: int,
        resolution: int,
        attrs: dict,
        *,
        field_columns: tuple[str, ...] = (),
        extras: tuple[str, ...] = (),
    ):
        self.path = Path(path)
        self.system = get_system(system)
        self.n_examples = n_examples
        self.resolution = resolution
        self.tmp_path = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Large datasets start on page boundaries so workers can write them with O_DIRECT.
        self._file = h5py.File(
            self.tmp_path, "w", alignment_threshold=65536, alignment_interval=_ALIGN
        )
        n = resolution
        f = self._file
        f.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION})
        f.attrs.update({"system": self.system.name, "system_label": self.system.label})
        f.attrs.update({"equation": self.system.equation, "code_version": code_version()})
        f.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        f.attrs["tensor_columns"] = list(self.system.tensor_names)
        for key, value in attrs.items():
            f.attrs[key] = value
        # Contiguous, allocated up front and never filled: worker processes write
        # blocks straight into it at known offsets (write_fields_direct).
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        self.fields = f.create_dataset(
            "fields", (n_examples, 2, n, n), dtype="<f4", dcpl=dcpl, fill_time="never"
        )
        self.field_columns = tuple(field_columns)
        self.coefficient_fields = None
        if self.field_columns:
            unknown = set(self.field_columns) - set(COEFFICIENT_NAMES)
            if unknown:
                raise ValueError(f"unknown coefficient columns {sorted(unknown)}")
            self.coefficient_fields = f.create_dataset(
                "coefficient_fields",
                (n_examples, len(self.field_columns), n, n),
                dtype="<f4",
                dcpl=dcpl,
                fill_time="never",
            )
            self.coefficient_fields.attrs["columns"] = list(self.field_columns)
        self.extras = {
            name: f.create_dataset(name, (n_examples,), dtype=PER_EXAMPLE[name]) for name in extras
        }
        self.tensor = f.create_dataset(
            "tensor", (n_examples, self.system.n_tensor_columns), dtype="<f4"
        )
        self.coefficients = f.create_dataset("coefficients", (n_examples, 6), dtype="<f8")
        self.coefficients.attrs["columns"] = ["k11", "k22", "k12", "v1", "v2", "w"]
        self.sparsity = f.create_dataset("sparsity", (n_examples,), dtype="<f4")
        self.other = None
        if self.system.name == "advection_diffusion":
            self.other = f.create_dataset("other", (n_examples, 1), dtype="<f4")
            f["psi"] = h5py.SoftLink("/other")
        self._written = 0

    def attrs_update(self, attrs: dict) -> None:
        self._file.attrs.update(attrs)

    @property
    def targets(self) -> BlockTargets:
        """Where the large arrays lie in the temporary file, for :meth:`BlockTargets.write`."""
        path, n = str(self.tmp_path), self.resolution
        fields = FieldsLocation(path, int(self.fields.id.get_offset()), n)
        coefficient_fields = None
        if self.coefficient_fields is not None:
            offset = int(self.coefficient_fields.id.get_offset())
            coefficient_fields = FieldsLocation(path, offset, n, len(self.field_columns))
        return BlockTargets(fields, coefficient_fields)

    def write(
        self,
        start: int,
        coefficients: np.ndarray,
        *,
        sources: np.ndarray | None = None,
        solutions: np.ndarray | None = None,
        sparsity: np.ndarray | None = None,
        psi: np.ndarray | None = None,
        coefficient_fields: np.ndarray | None = None,
        extras: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Write examples [start, start + len(coefficients)).

        Leave ``sources``/``solutions`` (and ``coefficient_fields``) out when
        they were written with :meth:`BlockTargets.write`.
        """
        stop = start + coefficients.shape[0]
        if stop > self.n_examples:
            raise IndexError(f"examples {start}:{stop} past the end ({self.n_examples})")
        if (sources is None) != (solutions is None):
            raise ValueError("give both sources and solutions, or neither")
        if sources is not None:
            self.fields[start:stop, 0] = sources
            self.fields[start:stop, 1] = solutions
        if coefficient_fields is not None:
            self.coefficient_fields[start:stop] = coefficient_fields
        missing = set(self.extras) - set(extras or {})
        if missing:
            raise ValueError(f"this file needs {sorted(missing)} for every example")
        for name, values in (extras or {}).items():
            self.extras[name][start:stop] = values
        self.coefficients[start:stop] = coefficients
        self.tensor[start:stop] = self.system.from_unified(coefficients)
        if sparsity is not None:
            self.sparsity[start:stop] = sparsity
        if self.other is not None:
            if psi is None:
                raise ValueError("advection_diffusion files need Psi for every example")
            self.other[start:stop, 0] = psi
        self._written += stop - start

    def commit(self) -> Path:
        if self._written != self.n_examples:
            raise RuntimeError(
                f"wrote {self._written} of {self.n_examples} examples; not committing"
            )
        self._file.close()
        os.replace(self.tmp_path, self.path)
        return self.path

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp_path.unlink()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


@dataclass(frozen=True)
class FieldsLocation:
    """A raw contiguous float32 (N, channels, n, n) array of a file being written: path,
    byte offset, grid size, channels per example."""

    path: str
    offset: int
    resolution: int
    channels: int = 2

    @property
    def example_nbytes(self) -> int:
        return self.channels * self.resolution * self.resolution * 4


@dataclass(frozen=True)
class BlockTargets:
    """Where a block's large arrays go: ``fields`` and, in field files, ``coefficient_fields``."""

    fields: FieldsLocation
    coefficient_fields: FieldsLocation | None = None

    def write(
        self,
        start: int,
        sources: np.ndarray,
        solutions: np.ndarray,
        coefficient_fields: np.ndarray | None = None,
    ) -> None:
        write_fields_direct(self.fields, start, sources, solutions)
        if self.coefficient_fields is not None:
            write_fields_direct(self.coefficient_fields, start, coefficient_fields)


_ALIGN = 4096
_direct_buffers: dict[int, np.ndarray] = {}


def _page_aligned(nbytes: int) -> np.ndarray:
    """A page-aligned byte buffer, kept for reuse by this process (O_DIRECT needs alignment;
    a block writes two arrays at most, so two sizes are kept)."""
    buf = _direct_buffers.get(nbytes)
    if buf is None:
        if len(_direct_buffers) >= 2:
            _direct_buffers.clear()
        buf = _direct_buffers[nbytes] = np.frombuffer(mmap.mmap(-1, nbytes), dtype=np.uint8)
    return buf


def _open_for_write(path: str, direct: bool) -> tuple[int, bool]:
    if direct:
        try:
            return os.open(path, os.O_WRONLY | os.O_DIRECT), True
        except OSError as e:  # e.g. tmpfs has no O_DIRECT
            if e.errno != errno.EINVAL:
                raise
    return os.open(path, os.O_WRONLY), False


def write_fields_direct(location: FieldsLocation, start: int, *channels: np.ndarray) -> None:
    """Write examples into a file's contiguous array at their offset: [source, solution]
    pairs into ``fields`` (two (B, n, n) arrays), or one (B, F, n, n) array.

    Lets worker processes fill one file in parallel without passing arrays
    through the parent; the parent keeps the HDF5 metadata. Aligned writes go
    around the page cache (O_DIRECT): on virtual machines that give freed
    memory back to the host, buffered writes of fresh data run at a quarter
    of the speed.
    """
    b, n = channels[0].shape[0], location.resolution
    shapes = [np.shape(a) for a in channels]
    per_example = sum(1 if a.ndim == 3 else a.shape[1] for a in channels)
    if per_example != location.channels or any(s[0] != b or s[-2:] != (n, n) for s in shapes):
        raise ValueError(
            f"need {location.channels} fields of {n} x {n} per example in total, got {shapes}"
        )
    nbytes = b * location.example_nbytes
    offset = location.offset + start * location.example_nbytes
    aligned = hasattr(os, "O_DIRECT") and offset % _ALIGN == 0 and nbytes % _ALIGN == 0
    raw = _page_aligned(nbytes) if aligned else np.empty(nbytes, dtype=np.uint8)
    fields = raw.view("<f4").reshape(b, location.channels, n, n)
    at = 0
    for a in channels:
        width = 1 if a.ndim == 3 else a.shape[1]
        fields[:, at : at + width] = a.reshape(b, width, n, n)
        at += width
    fd, direct = _open_for_write(location.path, aligned)
    try:
        view = memoryview(raw)
        while view:
            written = os.pwrite(fd, view, offset)
            if direct and written % _ALIGN:
                os.close(fd)  # a short unaligned write: finish without O_DIRECT
                fd, direct = _open_for_write(location.path, False)
            view, offset = view[written:], offset + written
    finally:
        os.close(fd)


@dataclass
class Chunk:
    """Examples [start, start + len) read from a file."""

    start: int
    sources: np.ndarray  # (B, n, n) float32
    solutions: np.ndarray  # (B, n, n) float32
    coefficients: np.ndarray  # (B, 6) float64, unified (reference values where fields vary)
    psi: np.ndarray | None
    sparsity: np.ndarray | None
    coefficient_fields: np.ndarray | None = None  # (B, F, n, n) float32, columns below
    field_columns: tuple[str, ...] = ()
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.sources.shape[0]

    def unified(self) -> np.ndarray:
        """The coefficients in the solver's layout: (B, 6) for constant-coefficient files,
        (B, 6, n, n) float64 where fields vary (the others as constant fields)."""
        return with_fields(self.coefficients, self.coefficient_fields, self.field_columns)


class DatasetReader:
    """Reads pdeserve files and the authors' files alike; use as a context manager.

    The system comes from the file's ``system`` attribute or, in the authors'
    files, from the width of ``tensor`` (3 Poisson, 5 advection-diffusion,
    2 Helmholtz). Coefficients are always returned in the unified layout.
    """

    def __init__(self, path: str | os.PathLike, system: str | System | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no dataset at {self.path}")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as e:
            raise ValueError(f"{self.path} is not an HDF5 file: {e}") from None
        f = self._file
        if "fields" not in f:
            self.close()
            raise ValueError(
                f"{self.path}: no 'fields' dataset; not a pdeserve or authors' dataset"
            )
        self.fields = f["fields"]
        if (
            self.fields.ndim != 4
            or self.fields.shape[1] != 2
            or self.fields.shape[2] != self.fields.shape[3]
        ):
            self.close()
            raise ValueError(f"{self.path}: 'fields' must be (N, 2, n, n), got {self.fields.shape}")
        self.layout = "pdeserve" if f.attrs.get("format") == FORMAT else "authors"
        if system is not None:
            self.system = get_system(system)
        elif "system" in f.attrs:
            self.system = get_system(str(f.attrs["system"]))
        elif "tensor" in f:
            self.system = system_for_tensor_width(f["tensor"].shape[1])
        else:
            self.close()
            raise ValueError(
                f"{self.path}: cannot tell the system (no 'system' attribute, no 'tensor')"
            )
        if "coefficients" not in f and "tensor" not in f:
            self.close()
            raise ValueError(f"{self.path}: no coefficients ('coefficients' or 'tensor')")
        self.attrs = dict(f.attrs)
        self.field_columns: tuple[str, ...] = ()
        self.coefficient_fields = f.get("coefficient_fields")
        if self.coefficient_fields is not None:
            self.field_columns = tuple(str(c) for c in self.coefficient_fields.attrs["columns"])
            expected = (len(self), len(self.field_columns), *self.fields.shape[2:])
            if self.coefficient_fields.shape != expected or not set(self.field_columns) <= set(
                COEFFICIENT_NAMES
            ):
                self.close()
                raise ValueError(
                    f"{self.path}: 'coefficient_fields' must be {expected} with unified column "
                    f"names, got {self.coefficient_fields.shape} {list(self.field_columns)}"
                )
        self.extra_columns = tuple(name for name in PER_EXAMPLE if name in f)

    def __len__(self) -> int:
        return self.fields.shape[0]

    @property
    def resolution(self) -> int:
        return int(self.fields.shape[-1])

    @property
    def has_fields(self) -> bool:
        """Whether some coefficients vary over the grid (stored in ``coefficient_fields``)."""
        return bool(self.field_columns)

    def coefficients(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        f = self._file
        if "coefficients" in f:
            return np.asarray(f["coefficients"][start:stop], dtype=np.float64)
        return self.system.to_unified(f["tensor"][start:stop])

    def psi(self, start: int = 0, stop: int | None = None) -> np.ndarray | None:
        if "other" not in self._file:
            return None
        return np.asarray(self._file["other"][start:stop, 0], dtype=np.float64)

    def sparsity(self, start: int = 0, stop: int | None = None) -> np.ndarray | None:
        """Sparsity level per example (pdeserve files only)."""
        if "sparsity" not in self._file:
            return None
        return np.asarray(self._file["sparsity"][start:stop], dtype=np.float64)

    def extra(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray | None:
        """A per-example array of field files (``contrast``, ``length``, ...), or None."""
        if name not in self.extra_columns:
            return None
        return np.asarray(self._file[name][start:stop])

    def read(self, start: int = 0, stop: int | None = None) -> Chunk:
        stop = len(self) if stop is None else min(stop, len(self))
        fields = self.fields[start:stop]
        sparsity = self.sparsity(start, stop)
        return Chunk(
            start,
            fields[:, 0],
            fields[:, 1],
            self.coefficients(start, stop),
            self.psi(start, stop),
            sparsity,
            None if self.coefficient_fields is None else self.coefficient_fields[start:stop],
            self.field_columns,
            {name: self.extra(name, start, stop) for name in self.extra_columns},
        )

    def chunks(self, chunk_size: int = 256) -> Iterator[Chunk]:
        """Contiguous chunks of ``chunk_size`` examples, in order."""
        for start in range(0, len(self), chunk_size):
            yield self.read(start, start + chunk_size)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> DatasetReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_dataset(path: str | os.PathLike, system: str | System | None = None) -> DatasetReader:
    """Open a dataset file (pdeserve's or the authors' layout) for reading."""
    return DatasetReader(path, system)
