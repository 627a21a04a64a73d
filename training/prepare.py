"""Resolve a config's data: generate and cache datagen specs, open files, compute statistics.

Runs once on the driver (or the single process) before training starts, so
distributed workers receive absolute paths and identical statistics.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from datagen.pipeline import write_split
from training.config import DataConfig, DataSource
from training.data import FieldData
from training.normalization import NormalizationStats, compute_stats


@dataclass
class PreparedData:
    train: FieldData
    val: FieldData
    stats: NormalizationStats
    lineage: dict  # what the data is, for the model card

    @property
    def resolution(self) -> int:
        return self.train.resolution


def generation_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def resolve_source(source: DataSource, cache_dir: Path, progress: bool = True) -> FieldData:
    """FieldData for one source, generating a datagen spec into the cache if absent."""
    if source.files is not None:
        paths = [Path(p).expanduser().resolve() for p in source.files]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"data files not found: {missing}")
    else:
        spec = source.generate
        path = (cache_dir / spec.cache_name()).resolve()
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_split(spec.split_spec(), path, workers=generation_workers(), progress=progress)
        paths = [path]
    return FieldData.from_files(paths, subsample=source.subsample, group=source.group)


def describe(source: DataSource) -> dict:
    return source.model_dump(exclude_none=True)


def prepare_data(config: DataConfig, progress: bool = True) -> PreparedData:
    cache_dir = Path(config.cache_dir).expanduser()
    train = FieldData.concat([resolve_source(s, cache_dir, progress) for s in config.train])
    val = FieldData.concat([resolve_source(s, cache_dir, progress) for s in config.val])
    if train.resolution != val.resolution:
        raise ValueError(
            f"train and val resolutions differ: {train.resolution} vs {val.resolution}"
        )
    groups = sorted(set(train.groups) | set(val.groups))
    train, val = train.with_groups(groups), val.with_groups(groups)
    lineage = {
        "train": [describe(s) for s in config.train],
        "val": [describe(s) for s in config.val],
        "n_train": len(train),
        "n_val": len(val),
        "resolution": train.resolution,
        "groups": train.groups,
    }
    return PreparedData(train, val, compute_stats(train), lineage)
