"""Run generation: blocks made here, by local processes or by Ray tasks; one file out.

- ``workers=1``: this process makes every block.
- ``workers=K > 1``: K local processes make blocks and write their fields
  straight into the output file at their offsets (see :mod:`datagen.workers`);
  this process keeps the HDF5 metadata and writes the small per-example arrays.
- ``ray_address``: shards of blocks become Ray tasks; each task writes its own
  shard file next to the output (the output folder must be on storage the
  cluster's nodes share), and the shards are merged into one dataset.

Every mode writes the same data for the same spec: blocks are seeded
independently (see :mod:`datagen.generate`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from datagen.dataset import BlockTargets, DatasetWriter, open_dataset
from datagen.generate import Block, extra_columns, generate_block
from datagen.ray_instance import ray_instance
from datagen.spec import FieldLaw, SamplingRanges, SplitSpec
from datagen.workers import GenerationWorkers


def _writer(spec: SplitSpec, path: Path) -> DatasetWriter:
    columns = () if spec.field_law is None else spec.field_law.columns(spec.pde)
    return DatasetWriter(
        path,
        spec.system,
        spec.n_examples,
        spec.resolution,
        spec.as_attrs(),
        field_columns=columns,
        extras=extra_columns(spec),
    )


def make_block_into(spec: SplitSpec, block: int, targets: BlockTargets, offset: int = 0) -> Block:
    """Generate a block, write its fields into ``targets``, return it without the fields."""
    b = generate_block(spec, block)
    targets.write(b.start - offset, b.sources, b.solutions, b.coefficient_fields)
    return b.without_fields()


def _record(writer: DatasetWriter, block: Block, offset: int = 0) -> None:
    writer.write(
        block.start - offset,
        block.coefficients,
        sparsity=block.sparsity,
        psi=block.psi,
        extras=block.extras,
    )


def write_split(
    spec: SplitSpec,
    path: str | os.PathLike,
    *,
    workers: int = 1,
    ray_address: str | None = None,
    progress: bool = True,
    pool: GenerationWorkers | None = None,
) -> Path:
    """Generate one split and write it to ``path`` (atomically). Returns the path.

    ``pool`` lends worker processes made by the caller (write_splits shares
    one across splits); otherwise ``workers > 1`` starts its own.
    """
    path = Path(path)
    if ray_address is not None:
        return _write_split_ray(spec, path, ray_address, progress)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    workers = min(workers, spec.n_blocks)
    bar = tqdm(
        total=spec.n_examples, unit="ex", desc=f"{spec.system} {spec.split}", disable=not progress
    )
    own_pool = pool is None and workers > 1
    if own_pool:
        pool = GenerationWorkers(workers)
    try:
        with _writer(spec, path) as writer:

            def record(block: Block) -> None:
                _record(writer, block)
                bar.update(len(block.coefficients))

            jobs = [(spec, b, writer.targets, 0) for b in range(spec.n_blocks)]
            if pool is None or workers == 1:
                for job in jobs:
                    record(make_block_into(*job))
            else:
                pool.run(jobs, record)
    except BaseException:
        if own_pool:
            pool.close(force=True)
            own_pool = False
        raise
    finally:
        bar.close()
        if own_pool:
            pool.close()
    return path


def _shard_ranges(spec: SplitSpec, n_shards: int) -> list[tuple[int, int]]:
    """Contiguous ranges of block indices, ``n_shards`` of them at most."""
    n_shards = max(1, min(n_shards, spec.n_blocks))
    step = -(-spec.n_blocks // n_shards)
    return [(b, min(b + step, spec.n_blocks)) for b in range(0, spec.n_blocks, step)]


def write_shard(spec: SplitSpec, first_block: int, last_block: int, path: str) -> str:
    """Make blocks [first_block, last_block) into a shard file (one Ray task's job)."""
    start, _ = spec.block_bounds(first_block)
    _, stop = spec.block_bounds(last_block - 1)
    with _writer(replace(spec, n_examples=stop - start), Path(path)) as writer:
        writer.attrs_update({"shard_start": start})
        for b in range(first_block, last_block):
            _record(writer, make_block_into(spec, b, writer.targets, offset=start), offset=start)
    return path


def _write_split_ray(spec: SplitSpec, path: Path, address: str, progress: bool) -> Path:
    with ray_instance(address) as ray:
        return _write_split_on_ray(ray, spec, path, progress)


def _write_split_on_ray(ray, spec: SplitSpec, path: Path, progress: bool) -> Path:
    n_cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    shard_dir = path.with_name(f".{path.name}.shards-{uuid.uuid4().hex[:8]}")
    shard_dir.mkdir(parents=True)
    task = ray.remote(num_cpus=1, max_retries=2)(write_shard)
    bar = tqdm(
        total=spec.n_examples,
        unit="ex",
        desc=f"{spec.system} {spec.split} (ray)",
        disable=not progress,
    )
    try:
        ranges = _shard_ranges(spec, 2 * n_cpus)
        refs = [
            task.remote(spec, a, b, str(shard_dir / f"shard-{i:05d}.h5"))
            for i, (a, b) in enumerate(ranges)
        ]
        remaining = list(refs)
        try:
            while remaining:
                ready, remaining = ray.wait(remaining, num_returns=1)
                for a, b in (ranges[refs.index(r)] for r in ready):
                    bar.update(spec.block_bounds(b - 1)[1] - spec.block_bounds(a)[0])
            shards = ray.get(refs)
        except BaseException:
            for ref in remaining:
                ray.cancel(ref, force=True)
            raise
        with _writer(spec, path) as writer:
            for shard in shards:
                with open_dataset(shard) as r:
                    offset = int(r.attrs["shard_start"])
                    for chunk in r.chunks(spec.block_size):
                        writer.write(
                            offset + chunk.start,
                            chunk.coefficients,
                            sources=chunk.sources,
                            solutions=chunk.solutions,
                            sparsity=chunk.sparsity,
                            psi=chunk.psi,
                            coefficient_fields=chunk.coefficient_fields,
                            extras=chunk.extras,
                        )
    finally:
        bar.close()
        shutil.rmtree(shard_dir, ignore_errors=True)
    return path


def write_splits(
    system: str,
    out_dir: str | os.PathLike,
    *,
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int = 0,
    resolution: int = 128,
    ranges: SamplingRanges | None = None,
    field_law: FieldLaw | None = None,
    workers: int = 1,
    ray_address: str | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Write ``out_dir/{train,val,test}.h5``, each split seeded apart (size 0: skipped);
    with ``field_law``, coefficient fields of that law."""
    splits = (("train", n_train), ("val", n_val), ("test", n_test))
    for split, n in splits:
        if n < 0:
            raise ValueError(f"n_{split} must be >= 0, got {n}")
    base = SplitSpec(
        system=system,
        n_examples=1,
        resolution=resolution,
        seed=seed,
        ranges=ranges or SamplingRanges(),
        field_law=field_law,
    )
    specs = {split: base.with_split(split, n) for split, n in splits if n > 0}
    n_blocks = sum(spec.n_blocks for spec in specs.values())
    shared = ray_address is None and workers > 1 and n_blocks > 1
    pool = GenerationWorkers(min(workers, n_blocks)) if shared else None
    out = Path(out_dir)
    failed = False
    session = ray_instance(ray_address) if ray_address is not None else contextlib.nullcontext()
    try:
        with session:
            return {
                split: write_split(
                    spec,
                    out / f"{split}.h5",
                    workers=workers,
                    ray_address=ray_address,
                    progress=progress,
                    pool=pool,
                )
                for split, spec in specs.items()
            }
    except BaseException:
        failed = True
        raise
    finally:
        if pool is not None:
            pool.close(force=failed)
