"""Datasets from files, mixing, subsampling, sharding, streaming, and the statistics."""

import numpy as np
import pytest
import torch
from authors_layout import write_authors_file

from datagen.dataset import open_dataset
from datagen.pipeline import write_split
from datagen.spec import SplitSpec
from datagen.systems import anisotropy
from training.data import BatchLoader, Examples, FieldData
from training.normalization import compute_stats


def _all(loader: BatchLoader, epoch=0):
    batches = list(loader.epoch(epoch))
    return batches, torch.cat([b.source for b in batches])


def test_mixed_dataset_labels_each_system(small_files):
    data = FieldData.from_files(list(small_files.values()))
    assert len(data) == 900
    assert data.groups == sorted(small_files)
    ex = data.load(chunk_size=128)
    counts = torch.bincount(ex.group, minlength=3).tolist()
    assert counts == [300, 300, 300]
    with open_dataset(small_files["helmholtz"]) as r:
        expected = r.read(0, 300)
    hid = data.groups.index("helmholtz")
    np.testing.assert_array_equal(ex.source[ex.group == hid].numpy(), expected.sources)
    np.testing.assert_allclose(ex.coefficients[ex.group == hid].numpy(), expected.coefficients)


def test_subsample_takes_the_first_examples_across_files(small_files):
    files = [small_files["poisson"], small_files["helmholtz"]]
    data = FieldData.from_files(files, subsample=350)
    assert len(data) == 350
    assert [len(p) for p in data.parts] == [300, 50]
    with pytest.raises(ValueError, match="subsample of 1000"):
        FieldData.from_files(files, subsample=1000)


def test_authors_layout_reads_like_ours(small_files, tmp_path):
    ours = open_dataset(small_files["advection_diffusion"])
    chunk = ours.read(0, 40)
    path = tmp_path / "authors.h5"
    write_authors_file(
        path, ours.system, chunk.sources, chunk.solutions, chunk.coefficients, psi=chunk.psi
    )
    theirs = FieldData.from_files([path]).load()
    np.testing.assert_array_equal(theirs.solution.numpy(), chunk.solutions)
    np.testing.assert_allclose(theirs.coefficients.numpy(), chunk.coefficients, rtol=1e-6)
    ours.close()


def test_shards_are_disjoint_equal_and_chunk_contiguous(small_files):
    data = FieldData.from_files(list(small_files.values()))
    shards = [data.shard(r, 3, chunk_size=64) for r in range(3)]
    sizes = {len(s) for s in shards}
    assert len(sizes) == 1
    assert sizes.pop() >= (900 - 3 * 64) // 3
    seen = set()
    for s in shards:
        for p in s.parts:
            assert len(p) <= 64
            ids = {(p.path, i) for i in range(p.start, p.stop)}
            assert not ids & seen
            seen |= ids
    evals = [data.eval_shard(r, 3, chunk_size=64) for r in range(3)]
    assert sum(len(s) for s in evals) == 900


def test_host_and_stream_placements_give_the_same_examples(small_files):
    data = FieldData.from_files([small_files["poisson"], small_files["helmholtz"]])
    host = BatchLoader(data, 32, placement="host", chunk_size=50, seed=4)
    stream = BatchLoader(data, 32, placement="stream", chunk_size=50, window_chunks=3, seed=4)
    assert host.placement == "host" and stream.placement == "stream"
    assert len(host) == len(stream) == 600 // 32
    for loader in (host, stream):
        batches, sources = _all(loader)
        assert len(batches) == len(loader) and all(len(b) == 32 for b in batches)
        # every batch drawn without repeats, from the 600 examples
        flat = sources.flatten(1)
        assert torch.unique(flat, dim=0).shape[0] == flat.shape[0]
    # a streamed batch mixes examples of several chunks (window shuffling)
    groups = [len(torch.unique(b.group)) for b in stream.epoch(0)]
    assert max(groups) == 2


def test_the_same_seed_and_epoch_give_the_same_order(small_files):
    data = FieldData.from_files([small_files["poisson"]])
    a = BatchLoader(data, 16, placement="host", seed=1)
    b = BatchLoader(data, 16, placement="host", seed=1)
    assert torch.equal(_all(a, 2)[1], _all(b, 2)[1])
    assert not torch.equal(_all(a, 2)[1], _all(a, 3)[1])


def test_validation_loader_keeps_every_example(small_files):
    data = FieldData.from_files([small_files["poisson"]])
    loader = BatchLoader(
        data, 64, shuffle=False, drop_last=False, placement="stream", chunk_size=70
    )
    _, sources = _all(loader)
    assert sources.shape[0] == 300
    with open_dataset(small_files["poisson"]) as r:
        np.testing.assert_array_equal(sources.numpy(), r.read().sources)


def test_stats_are_the_medians_of_the_paper(small_files):
    data = FieldData.from_files(list(small_files.values()))
    stats = compute_stats(data)
    ex = data.load()
    rms = ex.source.double().square().mean(dim=(1, 2)).sqrt()
    assert stats.source_ref == pytest.approx(float(np.median(rms.numpy())), rel=1e-6)
    v1 = ex.coefficients[:, 3].abs()
    assert stats.coefficient_ref[3] == pytest.approx(float(np.median(v1[v1 > 0].numpy())), rel=1e-6)
    w = ex.coefficients[:, 5]
    assert stats.coefficient_ref[5] == pytest.approx(float(np.median(w[w > 0].numpy())))


def test_batch_larger_than_data_is_refused(small_files):
    data = FieldData.from_files([small_files["poisson"]], subsample=10)
    with pytest.raises(ValueError, match="larger than"):
        BatchLoader(data, 32)


def test_files_of_different_resolutions_do_not_mix(small_files, tmp_path):

    other = write_split(
        SplitSpec(system="poisson", n_examples=4, resolution=16),
        tmp_path / "p16.h5",
        progress=False,
    )
    with pytest.raises(ValueError, match="different resolutions"):
        _ = FieldData.from_files([small_files["poisson"], other]).resolution


def test_placement_choice():
    from training.data import choose_placement

    cpu = torch.device("cpu")
    assert choose_placement("device", 10, cpu) == "host"  # no GPU: RAM instead
    assert choose_placement("auto", 10, cpu) == "host"
    assert choose_placement("auto", 10**15, cpu) == "stream"  # larger than memory
    with pytest.raises(ValueError, match="placement must be one of"):
        choose_placement("disk", 10, cpu)


def test_envelope_of_the_training_data(small_files):
    from training.prepare import envelope

    ranges = envelope(FieldData.from_files(list(small_files.values())))
    assert set(ranges) == {"poisson", "advection_diffusion", "helmholtz"}
    # The law the files record (datagen's defaults), not the span of 300 draws.
    for system in ("poisson", "advection_diffusion"):
        assert ranges[system]["eig"] == (1.0, 5.0)
    assert ranges["advection_diffusion"]["psi"] == pytest.approx((0.2, 1.0), rel=0.01)
    assert ranges["helmholtz"]["omega"] == (1.0, 10.0)
    assert "eig" not in ranges["helmholtz"] and ranges["poisson"]["n_examples"] == 300
    assert ranges["advection_diffusion"]["sources"] == {"eig": "law", "psi": "law"}
    assert ranges["helmholtz"]["sources"] == {"omega": "law"}


def test_a_file_without_a_recorded_law_gives_the_observed_span(small_files, tmp_path):
    from training.prepare import envelope

    with open_dataset(small_files["poisson"]) as r:
        chunk = r.read(0, 20)
    observed = (
        float(anisotropy(chunk.coefficients).min()),
        float(anisotropy(chunk.coefficients).max()),
    )
    bare = write_authors_file(
        tmp_path / "bare.h5", "poisson", chunk.sources, chunk.solutions, chunk.coefficients
    )
    alone = envelope(FieldData.from_files([bare]))["poisson"]
    assert alone["eig"] == pytest.approx(observed) and alone["sources"] == {"eig": "observed"}
    both = envelope(FieldData.from_files([bare, small_files["poisson"]]))["poisson"]
    assert both["eig"] == (1.0, 5.0) and both["sources"] == {"eig": "law+observed"}


@pytest.fixture(scope="module")
def field_file(tmp_path_factory):
    from datagen.spec import FieldLaw

    spec = SplitSpec(
        system="poisson", n_examples=40, resolution=32, seed=3, field_law=FieldLaw("two-phase")
    )
    return write_split(spec, tmp_path_factory.mktemp("fields") / "darcy.h5", progress=False)


def test_field_and_constant_files_mix(small_files, field_file):
    from training.prepare import envelope

    data = FieldData.from_files([small_files["poisson"], field_file])
    assert data.field_columns == (0, 1, 2)  # k11, k22, k12
    assert data.nbytes == len(data) * (5 * 32 * 32 + 7) * 4
    first, last = data.read(data.parts[0]), data.read(data.parts[1])
    c = first.model_coefficients()  # constant examples: constant fields of their scalars
    assert c.shape == (300, 6, 32, 32) and torch.all(c == first.coefficients[:, :, None, None])
    with open_dataset(field_file) as r:
        expected = torch.from_numpy(r.read().unified()).float()
    assert torch.equal(last.model_coefficients(), expected)
    # host and stream placements give the same field batches
    host = BatchLoader(data, 20, placement="host", seed=2, chunk_size=32)  # 340 = 17 x 20
    stream = BatchLoader(data, 20, placement="stream", seed=2, chunk_size=32, window_chunks=4)
    a = Examples.cat(list(host.epoch(1)))
    b = Examples.cat(list(stream.epoch(1)))
    order = lambda e: torch.argsort(e.source.square().sum(dim=(1, 2)))  # noqa: E731
    assert torch.equal(a.fields[order(a)], b.fields[order(b)])
    ranges = envelope(data)["poisson"]
    assert ranges["n_examples"] == 340 and ranges["field"]["n_examples"] == 40
    assert ranges["field"]["laws"] == ["two-phase"]
    lo, hi = ranges["field"]["contrast"]
    assert 1 <= lo < hi <= 100 * (1 + 1e-5) and ranges["field"]["length"][1] <= 0.3 + 1e-6
