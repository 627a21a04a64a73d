"""Training data: examples from HDF5 files (pdeserve's or the authors' layout).

``FieldData`` is a list of contiguous example ranges (``Part``) over files;
mixing systems is listing parts of several files, subsampling is taking the
first N examples. Files with coefficient fields and constant-coefficient files
mix: where any part has fields, every example carries the union of the varying
columns as fields (constant examples as constant fields), and
``Examples.model_coefficients`` gives the model its (B, 6, n, n) input.
``BatchLoader`` turns it into shuffled batches on a device:

- ``device``: the whole set lives in GPU memory, batches are index gathers;
- ``host``: the whole set lives in (pinned) RAM;
- ``stream``: for sets larger than memory, contiguous chunks are read in a
  shuffled order, a window of them is shuffled together, and the next window
  is read in a background thread while the current one trains.

Reads are always contiguous chunks. Distributed workers each read their own
shard of chunks, trimmed so every worker runs the same number of steps.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from datagen.dataset import DatasetReader, open_dataset
from datagen.systems import COEFFICIENT_NAMES

Placement = Literal["auto", "device", "host", "stream"]
PLACEMENTS: tuple[str, ...] = ("auto", "device", "host", "stream")
CHUNK_SIZE = 256
#: Share of free memory the whole-set placements may take.
MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class Part:
    """Examples [start, stop) of one file, labelled for per-group metrics."""

    path: str
    start: int
    stop: int
    group: str

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass
class Examples:
    """A batch: source and solution (B, n, n), unified coefficients (B, 6) (reference values
    where fields vary), group ids (B,), and where the data has coefficient fields, ``fields``
    (B, F, n, n): the unified coefficients ``columns`` as fields."""

    source: torch.Tensor
    solution: torch.Tensor
    coefficients: torch.Tensor
    group: torch.Tensor
    fields: torch.Tensor | None = None
    columns: tuple[int, ...] = ()

    def __len__(self) -> int:
        return self.source.shape[0]

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        base = (self.source, self.solution, self.coefficients, self.group)
        return base if self.fields is None else (*base, self.fields)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Examples:
        return Examples(*map(fn, self._tensors()), columns=self.columns)

    def model_coefficients(self) -> torch.Tensor:
        """What the model takes: (B, 6), or (B, 6, n, n) where the data has fields."""
        if self.fields is None:
            return self.coefficients
        n = self.fields.shape[-1]
        out = self.coefficients[:, :, None, None].expand(-1, -1, n, n).clone()
        out[:, list(self.columns)] = self.fields
        return out

    def to(self, device: torch.device, non_blocking: bool = False) -> Examples:
        return self.map(lambda t: t.to(device, non_blocking=non_blocking))

    def index(self, idx: torch.Tensor) -> Examples:
        return self.map(lambda t: t[idx])

    def pin_memory(self) -> Examples:
        return self.map(torch.Tensor.pin_memory)

    @staticmethod
    def cat(items: Sequence[Examples]) -> Examples:
        columns = {e.columns for e in items}
        if len(columns) != 1:
            raise ValueError(f"cannot join examples with field columns {sorted(columns)}")
        tensors = zip(*(e._tensors() for e in items), strict=True)
        return Examples(*(torch.cat(ts) for ts in tensors), columns=columns.pop())


class FieldData:
    """An ordered list of parts; cheap to copy, opens files only when reading."""

    def __init__(self, parts: Sequence[Part], groups: Sequence[str] | None = None):
        self.parts = [p for p in parts if len(p) > 0]
        if not self.parts:
            raise ValueError("no examples: the dataset is empty")
        own = sorted({p.group for p in self.parts})
        self.groups = list(groups) if groups is not None else own
        unknown = set(own) - set(self.groups)
        if unknown:
            raise ValueError(f"parts of groups {sorted(unknown)} not in {self.groups}")
        self._readers: dict[str, DatasetReader] = {}

    @classmethod
    def from_files(
        cls,
        paths: Sequence[str | os.PathLike],
        subsample: int | None = None,
        group: str | None = None,
    ) -> FieldData:
        """Files read in order; ``subsample`` keeps the first N examples overall."""
        parts = []
        for path in paths:
            with open_dataset(path) as reader:
                parts.append(Part(str(path), 0, len(reader), group or reader.system.name))
        data = cls(parts)
        return data.head(subsample) if subsample is not None else data

    @staticmethod
    def concat(datasets: Sequence[FieldData], groups: Sequence[str] | None = None) -> FieldData:
        return FieldData([p for d in datasets for p in d.parts], groups)

    def with_groups(self, groups: Sequence[str]) -> FieldData:
        """The same examples with group ids numbered after ``groups`` (shared by train and val)."""
        return FieldData(self.parts, groups)

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __getstate__(self) -> dict:
        return {"parts": self.parts, "groups": self.groups, "_readers": {}}

    def head(self, n: int) -> FieldData:
        """The first ``n`` examples (the downstream-size subsets of the transfer runs)."""
        if n < 1:
            raise ValueError(f"subsample must be >= 1, got {n}")
        if n > len(self):
            raise ValueError(f"subsample of {n} asked from {len(self)} examples")
        parts, left = [], n
        for p in self.parts:
            take = min(left, len(p))
            parts.append(replace(p, stop=p.start + take))
            left -= take
            if left == 0:
                break
        return FieldData(parts, self.groups)

    def reader(self, path: str) -> DatasetReader:
        if path not in self._readers:
            self._readers[path] = open_dataset(path)
        return self._readers[path]

    @cached_property
    def field_columns(self) -> tuple[int, ...]:
        """Unified indices that vary in some part, in the unified order (() : none do)."""
        names = {c for p in self.parts for c in self.reader(p.path).field_columns}
        return tuple(i for i, name in enumerate(COEFFICIENT_NAMES) if name in names)

    @cached_property
    def resolution(self) -> int:
        sizes = {self.reader(p.path).resolution for p in self.parts}
        if len(sizes) != 1:
            raise ValueError(f"files of different resolutions cannot be mixed: {sorted(sizes)}")
        return sizes.pop()

    @property
    def nbytes(self) -> int:
        """Memory the whole set takes as float32 tensors."""
        images = 2 + len(self.field_columns)
        return len(self) * (images * self.resolution**2 + 6 + 1) * 4

    def chunks(self, chunk_size: int = CHUNK_SIZE) -> list[Part]:
        """Contiguous pieces of at most ``chunk_size`` examples, in file order."""
        return [
            Part(p.path, s, min(s + chunk_size, p.stop), p.group)
            for p in self.parts
            for s in range(p.start, p.stop, chunk_size)
        ]

    def shard(self, rank: int, world_size: int, chunk_size: int = CHUNK_SIZE) -> FieldData:
        """Chunks rank, rank + W, ...; trimmed so every rank holds the same number of examples."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        chunks = self.chunks(chunk_size)
        if len(chunks) < world_size:
            raise ValueError(
                f"{len(self)} examples in {len(chunks)} chunks cannot be shared by "
                f"{world_size} workers; use a smaller chunk_size or fewer workers"
            )
        size = min(sum(len(c) for c in chunks[r::world_size]) for r in range(world_size))
        return FieldData(chunks[rank::world_size], self.groups).head(size)

    def eval_shard(self, rank: int, world_size: int, chunk_size: int = CHUNK_SIZE) -> FieldData:
        """Every example exactly once across ranks (chunks small enough that none is idle)."""
        if len(self) < world_size:
            raise ValueError(f"{len(self)} examples cannot be shared by {world_size} workers")
        size = max(1, min(chunk_size, len(self) // world_size))
        return FieldData(self.chunks(size)[rank::world_size], self.groups)

    def read(self, part: Part) -> Examples:
        chunk = self.reader(part.path).read(part.start, part.stop)
        group = self.groups.index(part.group)
        fields = None
        if self.field_columns:
            n = chunk.sources.shape[-1]
            fields = np.empty((len(chunk), len(self.field_columns), n, n), dtype=np.float32)
            for k, j in enumerate(self.field_columns):
                name = COEFFICIENT_NAMES[j]
                if name in chunk.field_columns:
                    fields[:, k] = chunk.coefficient_fields[:, chunk.field_columns.index(name)]
                else:  # a constant example, or a coefficient this file holds constant
                    fields[:, k] = chunk.coefficients[:, j, None, None]
            fields = torch.from_numpy(fields)
        return Examples(
            torch.from_numpy(np.ascontiguousarray(chunk.sources, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(chunk.solutions, dtype=np.float32)),
            torch.from_numpy(chunk.coefficients.astype(np.float32)),
            torch.full((len(chunk),), group, dtype=torch.int64),
            fields,
            self.field_columns,
        )

    def load(self, chunk_size: int = CHUNK_SIZE, progress: bool = False) -> Examples:
        """Everything, read chunk by chunk into one set of tensors."""
        n, res, columns = len(self), self.resolution, self.field_columns
        out = Examples(
            torch.empty(n, res, res),
            torch.empty(n, res, res),
            torch.empty(n, 6),
            torch.empty(n, dtype=torch.int64),
            torch.empty(n, len(columns), res, res) if columns else None,
            columns,
        )
        at = 0
        with tqdm(total=n, unit="ex", desc="loading", disable=not progress, leave=False) as bar:
            for part in self.chunks(chunk_size):
                ex = self.read(part)
                for dst, src in zip(out._tensors(), ex._tensors(), strict=True):
                    dst[at : at + len(ex)] = src
                at += len(ex)
                bar.update(len(ex))
        return out

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()


def available_memory(device: torch.device) -> int:
    """Free bytes on a CUDA device, or MemAvailable of this host."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def choose_placement(placement: Placement, nbytes: int, device: torch.device) -> str:
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if placement == "device" and device.type != "cuda":
        return "host"
    if placement != "auto":
        return placement
    if device.type == "cuda" and nbytes < MEMORY_SHARE * available_memory(device):
        return "device"
    if nbytes < MEMORY_SHARE * available_memory(torch.device("cpu")):
        return "host"
    return "stream"


class BatchLoader:
    """Batches of a ``FieldData`` on ``device``; the same seed and epoch give the same order."""

    def __init__(
        self,
        data: FieldData,
        batch_size: int,
        device: torch.device | str = "cpu",
        *,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        placement: Placement = "auto",
        chunk_size: int = CHUNK_SIZE,
        window_chunks: int = 16,
        progress: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if drop_last and len(data) < batch_size:
            raise ValueError(f"batch_size {batch_size} is larger than the {len(data)} examples")
        self.data = data
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.chunk_size = chunk_size
        self.window_chunks = max(1, window_chunks)
        self.placement = choose_placement(placement, data.nbytes, self.device)
        self.examples: Examples | None = None
        if self.placement != "stream":
            examples = data.load(chunk_size, progress=progress)
            if self.placement == "device":
                examples = examples.to(self.device)
            elif self.device.type == "cuda":
                examples = examples.pin_memory()
            self.examples = examples

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(hash((self.seed, epoch)) % 2**63)

    def epoch(self, epoch: int = 0) -> Iterator[Examples]:
        if self.examples is not None:
            yield from self._batches(self.examples, self._generator(epoch), len(self))
        else:
            yield from self._stream(self._generator(epoch))

    def __iter__(self) -> Iterator[Examples]:
        return self.epoch(0)

    def _batches(
        self, examples: Examples, gen: torch.Generator, n_batches: int
    ) -> Iterator[Examples]:
        """``n_batches`` batches of a shuffled order of ``examples``; returns the unused rest."""
        n = len(examples)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        order = order.to(examples.source.device)
        non_blocking = self.device.type == "cuda"
        for b in range(n_batches):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield examples.index(idx).to(self.device, non_blocking=non_blocking)
        return examples.index(order[n_batches * self.batch_size :])

    def _stream(self, gen: torch.Generator) -> Iterator[Examples]:
        chunks = self.data.chunks(self.chunk_size)
        if self.shuffle:
            chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=gen)]
        windows = [
            chunks[i : i + self.window_chunks] for i in range(0, len(chunks), self.window_chunks)
        ]
        left, remaining = None, len(self)
        for examples in _prefetch(windows, self._read_window):
            if left is not None:
                examples = Examples.cat([left, examples])
            usable = min(len(examples) // self.batch_size, remaining)
            left = yield from self._batches(examples, gen, usable)
            remaining -= usable
        if remaining and left is not None and len(left):
            yield from self._batches(left, gen, 1)

    def _read_window(self, window: list[Part]) -> Examples:
        return Examples.cat([self.data.read(part) for part in window])


def _prefetch(items: list, load) -> Iterator:
    """Yield ``load(item)`` for each item, loading the next one in a background thread."""
    result: dict[int, object] = {}

    def work(i: int) -> None:
        try:
            result[i] = load(items[i])
        except BaseException as e:  # re-raised in the consumer
            result[i] = e

    thread = None
    if items:
        thread = threading.Thread(target=work, args=(0,), daemon=True)
        thread.start()
    for i in range(len(items)):
        thread.join()
        if i + 1 < len(items):
            thread = threading.Thread(target=work, args=(i + 1,), daemon=True)
            thread.start()
        value = result.pop(i)
        if isinstance(value, BaseException):
            raise value
        yield value
