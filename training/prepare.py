"""Resolve a config's data: generate and cache datagen specs, open files, compute statistics.

Runs once on the driver (or the single process) before training starts, so
distributed workers receive absolute paths and identical statistics.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datagen.coefficients import contrast, variation
from datagen.pipeline import write_split
from datagen.systems import anisotropy
from training.config import DataConfig, DataSource, GenerateSpec
from training.data import FieldData
from training.layers.normalization import Layout
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
        paths = [generated_file(source.generate, cache_dir, progress)]
    return FieldData.from_files(paths, subsample=source.subsample, group=source.group)


def generated_file(spec: GenerateSpec, cache_dir: Path, progress: bool = True) -> Path:
    """The file a datagen spec names in the cache, generated first if absent."""
    path = (Path(cache_dir) / spec.cache_name()).resolve()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_split(spec.split_spec(), path, workers=generation_workers(), progress=progress)
    return path


#: Envelope key -> the attribute in which a dataset file records that range's law.
LAW_ATTRS = {
    "eig": "eig_range",
    "psi": "ratio_range",
    "omega": "omega_range",
    "contrast": "contrast_range",
    "variation": "variation_range",
    "length": "length_range",
}


def envelope(data: FieldData) -> dict[str, dict]:
    """Coefficient ranges per system (the key the service looks requests up by, whatever
    the metric groups are called): diffusion anisotropy (eigenvalue ratio), Psi, w, and
    where the system had coefficient fields their law, contrast, variation and length.

    A range is the law the files were drawn from where they record one (datagen's
    ``*_range`` attributes; widened to what was observed where a value strays past it,
    e.g. the mean of a varying w), else the range observed in the examples: 16 examples
    drawn from e in (5, 10) span 5.1..9.5, yet the model was trained for (5, 10).
    ``sources`` says which, per range: "law", "observed", or "law+observed" where some
    files recorded the law and some did not.
    """
    seen: dict[str, dict[str, list[np.ndarray]]] = {}
    laws: dict[str, set[str]] = {}
    counts: dict[str, list[int]] = {}  # system -> [examples, examples with fields]
    origins: dict[str, dict[str, set[str]]] = {}  # system -> range -> {law, observed}
    for part in data.parts:
        reader = data.reader(part.path)
        c = reader.coefficients(part.start, part.stop)
        system = reader.system.name
        count = counts.setdefault(system, [0, 0])
        count[0] += len(part)
        group = seen.setdefault(system, {key: [] for key in LAW_ATTRS})
        observed: dict[str, np.ndarray] = {}
        if reader.system.name != "helmholtz":  # Helmholtz carries the fixed K = 0.01 I
            observed["eig"] = anisotropy(c)
        psi = reader.psi(part.start, part.stop)
        if psi is not None:
            observed["psi"] = psi
        if np.any(c[:, 5] != 0):
            observed["omega"] = c[:, 5]
        if reader.has_fields:
            count[1] += len(part)
            laws.setdefault(system, set()).add(str(reader.attrs.get("field_law", "unrecorded")))
            observed |= _field_statistics(reader, part)
        for key, values in observed.items():
            law = reader.attrs.get(LAW_ATTRS[key])
            origin = "observed" if law is None else "law"
            if law is not None:
                values = np.concatenate([np.ravel(values), np.asarray(law, dtype=np.float64)])
            group[key].append(values)
            origins.setdefault(system, {}).setdefault(key, set()).add(origin)
    out = {}
    for name, ranges in seen.items():
        n, n_fields = counts[name]
        span = {
            k: (float(np.min(np.concatenate(v))), float(np.max(np.concatenate(v))))
            for k, v in ranges.items()
            if v
        }
        sources = {k: "+".join(sorted(origins[name][k])) for k in span}
        out[name] = {"n_examples": n, "sources": sources}
        out[name] |= {k: span[k] for k in ("eig", "psi", "omega") if k in span}
        if name in laws:
            field = {"n_examples": n_fields, "laws": sorted(laws[name])}
            out[name]["field"] = field | {
                k: span[k] for k in ("contrast", "variation", "length") if k in span
            }
    return out


def _field_statistics(reader, part) -> dict[str, np.ndarray]:
    """Contrast (diffusion) or variation (Helmholtz) and length of a part's fields: the
    file's own per-example record where it has one, else measured on the fields."""
    key = "variation" if reader.system.name == "helmholtz" else "contrast"
    stats = {}
    recorded = reader.extra(key, part.start, part.stop)
    if recorded is None:
        measure = variation if key == "variation" else contrast
        recorded = np.concatenate(
            [
                measure(reader.read(s, min(s + 256, part.stop)).unified())
                for s in range(part.start, part.stop, 256)
            ]
        )
    stats[key] = recorded
    length = reader.extra("length", part.start, part.stop)
    if length is not None:
        stats["length"] = length
    return stats


def prepare_data(
    config: DataConfig, progress: bool = True, layout: Layout = "values"
) -> PreparedData:
    """The train and val data, their lineage and envelope, and the normalisation
    statistics in the model's input ``layout``."""
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
        "train": [s.model_dump(exclude_none=True) for s in config.train],
        "val": [s.model_dump(exclude_none=True) for s in config.val],
        "n_train": len(train),
        "n_val": len(val),
        "resolution": train.resolution,
        "groups": train.groups,
        "envelope": envelope(train),
    }
    return PreparedData(train, val, compute_stats(train, layout=layout), lineage)
