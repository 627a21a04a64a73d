"""Dataset files: layout, round trips through the authors' layout, atomic writes, readers,
and the same data whatever runs the generation (one process, worker processes, Ray)."""

import h5py
import numpy as np
import pytest
from authors_layout import write_authors_file
from ray_helpers import init_ray

from datagen.dataset import DatasetWriter, open_dataset
from datagen.pipeline import write_split, write_splits
from datagen.spec import SplitSpec


@pytest.fixture(scope="module")
def small_splits(tmp_path_factory):
    out = tmp_path_factory.mktemp("ad")
    write_splits(
        "advection_diffusion", out, n_train=70, n_val=20, n_test=0, resolution=32, progress=False
    )
    return out


def test_files_carry_the_authors_layout_and_ours(small_splits):
    assert sorted(p.name for p in small_splits.iterdir()) == ["train.h5", "val.h5"]
    with h5py.File(small_splits / "train.h5", "r") as f:
        assert f["fields"].shape == (70, 2, 32, 32) and f["fields"].dtype == np.dtype("<f4")
        assert f["tensor"].shape == (70, 5) and f["tensor"].dtype == np.dtype("<f4")
        assert f["other"].shape == (70, 1)
        assert np.array_equal(f["psi"][:], f["other"][:])
        assert f["coefficients"].shape == (70, 6)
        assert np.allclose(f["tensor"][:], f["coefficients"][:, :5])
        attrs = dict(f.attrs)
    assert attrs["system"] == "advection_diffusion" and attrs["split"] == "train"
    assert attrs["seed"] == 0 and attrs["resolution"] == 32 and attrs["n_examples"] == 70
    assert list(attrs["eig_range"]) == [1.0, 5.0] and list(attrs["ratio_range"]) == [0.2, 1.0]
    assert attrs["code_version"].startswith("pdeserve ")


def test_authors_loader_reads_our_files(small_splits):
    """What the authors' loader does: fields[:, :1] as input, tensor columns as channels."""
    with h5py.File(small_splits / "val.h5", "r") as f:
        x = f["fields"][3, 0:1]
        tensor = f["tensor"][3]
        y = f["fields"][3, 1:]
    channels = np.concatenate([x] + [np.full((1, 32, 32), t) for t in tensor])
    assert channels.shape == (6, 32, 32) and y.shape == (1, 32, 32)


@pytest.mark.parametrize("system", ["poisson", "advection_diffusion", "helmholtz"])
def test_round_trip_through_authors_layout(tmp_path, system):
    path = tmp_path / "ours.h5"
    write_split(SplitSpec(system=system, n_examples=12, resolution=32), path, progress=False)
    with open_dataset(path) as r:
        ours = r.read()
        assert r.layout == "pdeserve" and r.system.name == system
    authors = write_authors_file(
        tmp_path / "authors.h5", system, ours.sources, ours.solutions, ours.coefficients, ours.psi
    )
    with h5py.File(authors, "r") as f:
        assert set(f.keys()) == (
            {"fields", "tensor", "other"}
            if system == "advection_diffusion"
            else {"fields", "tensor"}
        )
        assert len(f.attrs) == 0
    with open_dataset(authors) as r:
        back = r.read()
        assert r.layout == "authors" and r.system.name == system
    assert np.array_equal(back.sources, ours.sources) and np.array_equal(
        back.solutions, ours.solutions
    )
    assert np.allclose(back.coefficients, ours.coefficients, rtol=1e-7, atol=0)
    if system == "advection_diffusion":
        assert np.allclose(back.psi, ours.psi, rtol=1e-7)


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "x.h5"
    with pytest.raises(RuntimeError, match="boom"), DatasetWriter(path, "poisson", 4, 16, {}) as w:
        w.write(
            0,
            np.tile([0.01, 0.01, 0, 0, 0, 0], (2, 1)),
            sources=np.zeros((2, 16, 16)),
            solutions=np.zeros((2, 16, 16)),
        )
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_incomplete_write_is_not_committed(tmp_path):
    w = DatasetWriter(tmp_path / "x.h5", "poisson", 4, 16, {})
    with pytest.raises(RuntimeError, match="wrote 0 of 4"):
        w.commit()
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_interrupted_generation_leaves_no_file(tmp_path, monkeypatch):
    import datagen.pipeline as pipeline

    calls = {"n": 0}
    real = pipeline.generate_block

    def failing(spec, block):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(spec, block)

    monkeypatch.setattr(pipeline, "generate_block", failing)
    with pytest.raises(KeyboardInterrupt):
        write_split(
            SplitSpec(system="poisson", n_examples=40, resolution=16, block_size=10),
            tmp_path / "train.h5",
            progress=False,
        )
    assert list(tmp_path.iterdir()) == []


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_dataset(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        open_dataset(tmp_path / "text.h5")
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(ValueError, match="no 'fields'"):
        open_dataset(tmp_path / "empty.h5")
    with h5py.File(tmp_path / "notensor.h5", "w") as f:
        f["fields"] = np.zeros((2, 2, 16, 16), "f4")
    with pytest.raises(ValueError, match="cannot tell the system"):
        open_dataset(tmp_path / "notensor.h5")
    with h5py.File(tmp_path / "width.h5", "w") as f:
        f["fields"] = np.zeros((2, 2, 16, 16), "f4")
        f["tensor"] = np.zeros((2, 4), "f4")
    with pytest.raises(ValueError, match="4 tensor columns"):
        open_dataset(tmp_path / "width.h5")


def test_chunks_cover_the_file_in_order(small_splits):
    with open_dataset(small_splits / "train.h5") as r:
        chunks = list(r.chunks(32))
        whole = r.read()
    assert [c.start for c in chunks] == [0, 32, 64] and [len(c) for c in chunks] == [32, 32, 6]
    assert np.array_equal(np.concatenate([c.solutions for c in chunks]), whole.solutions)


def _arrays(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][:] for k in ("fields", "tensor", "coefficients", "sparsity")}


def test_same_dataset_whatever_the_number_of_workers(tmp_path):
    spec = SplitSpec(system="helmholtz", n_examples=50, resolution=32, block_size=8)
    one = write_split(spec, tmp_path / "one.h5", workers=1, progress=False)
    three = write_split(spec, tmp_path / "three.h5", workers=3, progress=False)
    a, b = _arrays(one), _arrays(three)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_ray_shards_make_the_same_dataset(tmp_path):
    import ray

    from datagen.spec import FieldLaw

    spec = SplitSpec(system="advection_diffusion", n_examples=45, resolution=32, block_size=8)
    fields = SplitSpec(
        system="helmholtz", n_examples=20, resolution=16, block_size=8, field_law=FieldLaw()
    )
    local = write_split(spec, tmp_path / "local.h5", progress=False)
    local_fields = write_split(fields, tmp_path / "local-fields.h5", progress=False)
    init_ray()
    try:
        sharded = write_split(spec, tmp_path / "ray.h5", ray_address="auto", progress=False)
        sharded_fields = write_split(
            fields, tmp_path / "ray-fields.h5", ray_address="auto", progress=False
        )
    finally:
        ray.shutdown()
    a, b = _arrays(local), _arrays(sharded)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    with h5py.File(local, "r") as f, h5py.File(sharded, "r") as g:
        assert np.array_equal(f["other"][:], g["other"][:])
    with h5py.File(local_fields, "r") as f, h5py.File(sharded_fields, "r") as g:
        names = {k for k in f if isinstance(f[k], h5py.Dataset)}
        assert {"coefficient_fields", "variation", "iterations"} <= names
        assert all(np.array_equal(f[k][:], g[k][:]) for k in names)
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == ["local-fields.h5", "local.h5", "ray-fields.h5", "ray.h5"]  # shards cleaned up


def test_direct_writes_fall_back_where_o_direct_is_refused(tmp_path, monkeypatch):
    """Filesystems such as tmpfs refuse O_DIRECT (EINVAL): the fields still land, buffered."""
    import errno
    import os

    from datagen.dataset import write_fields_direct

    real_open = os.open
    refused = []

    def no_direct(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            refused.append(path)
            raise OSError(errno.EINVAL, "O_DIRECT not supported")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    rng = np.random.default_rng(0)
    f, u = rng.standard_normal((2, 4, 64, 64)).astype(np.float32)
    with DatasetWriter(tmp_path / "x.h5", "poisson", 4, 64, {}) as w:
        assert w.targets.fields.offset % 4096 == 0  # large datasets start on a page
        write_fields_direct(w.targets.fields, 0, f, u)
        w.write(0, np.tile([0.01, 0.01, 0, 0, 0, 0], (4, 1)))
    assert refused  # the aligned write asked for O_DIRECT first
    with open_dataset(tmp_path / "x.h5") as r:
        back = r.read()
    assert np.array_equal(back.sources, f) and np.array_equal(back.solutions, u)


def test_worker_failure_reaches_the_caller(tmp_path):
    from datagen.dataset import BlockTargets, FieldsLocation
    from datagen.workers import GenerationWorkers, WorkerError

    spec = SplitSpec(system="poisson", n_examples=8, resolution=16, block_size=8)
    nowhere = BlockTargets(FieldsLocation(str(tmp_path / "missing" / "x.h5"), 0, 16))
    with pytest.raises(WorkerError, match="FileNotFoundError"), GenerationWorkers(1) as workers:
        workers.run([(spec, 0, nowhere, 0)], lambda block: None)
