"""Field laws, field datasets end to end: the laws' promises (contrast, mean, correlation),
blocks that solve their PDE, files that read back as the solver's layout, the CLI."""

import json

import h5py
import numpy as np
import pytest

from datagen import media, residual
from datagen.dataset import open_dataset
from datagen.generate import HELMHOLTZ_MAX_ABS, generate_block
from datagen.pipeline import write_split
from datagen.spec import FieldLaw, SplitSpec
from datagen.systems import K11, K12, K22, W
from pdeserve.cli import main


def test_gaussian_random_fields_have_zero_mean_and_the_asked_correlation(rng):
    n, length = 64, 0.1
    g = media.gaussian_random_fields(rng, np.full(400, length), n)
    assert np.abs(g.mean(axis=(1, 2))).max() < 1e-14
    g /= g.std()
    # exp(-r^2 / 2 l^2) summed over the periodic images, less the mean mode that was removed
    k = np.fft.fftfreq(n, 1 / n)
    density = np.exp(-2 * np.pi**2 * length**2 * (k[:, None] ** 2 + k[None, :] ** 2))
    density[0, 0] = 0.0
    for lag in (3, 6, 12):  # along x and along y
        expected = (density * np.cos(2 * np.pi * k[None, :] * lag / n)).sum() / density.sum()
        for axis in (1, 2):
            measured = (g * np.roll(g, lag, axis=axis)).mean()
            assert abs(measured - expected) < 0.02, (lag, axis, measured, expected)


@pytest.mark.parametrize("kind", media.FIELD_KINDS)
def test_conductivity_contrast_is_exact(kind, rng):
    g = media.gaussian_random_fields(rng, np.full(5, 0.1), 32)
    contrast = np.array([1.0, 2.0, 10.0, 100.0, 1000.0])
    a = media.conductivity(g, contrast, kind)
    assert np.allclose(a.max(axis=(1, 2)) / a.min(axis=(1, 2)), contrast, rtol=1e-12)
    assert np.allclose(a.max(axis=(1, 2)) * a.min(axis=(1, 2)), 1.0)
    if kind == "two-phase":
        assert all(len(np.unique(x)) <= 2 for x in a)


def test_wavenumber_fields_keep_the_mean_and_the_variation(rng):
    g = media.gaussian_random_fields(rng, np.full(3, 0.2), 32)
    w = media.wavenumber_field(g, np.array([2.0, 5.0, 9.0]), np.array([0.1, 0.2, 0.3]), "smooth")
    assert np.allclose(w.mean(axis=(1, 2)), [2.0, 5.0, 9.0], rtol=1e-13)
    spread = np.abs(w - np.array([2.0, 5.0, 9.0])[:, None, None]).max(axis=(1, 2))
    assert np.allclose(spread, [0.2, 1.0, 2.7])
    with pytest.raises(ValueError, match="unknown field law"):
        media.wavenumber_field(g, np.ones(3), np.ones(3), "layered")


def test_field_laws_are_validated():
    with pytest.raises(ValueError, match="field law must be one of"):
        FieldLaw(kind="fractal")
    with pytest.raises(ValueError, match="contrast range"):
        FieldLaw(contrast=(0.5, 10))
    with pytest.raises(ValueError, match="correlation length range"):
        FieldLaw(length=(0.3, 0.1))
    with pytest.raises(ValueError, match="variation must be below 1"):
        FieldLaw(variation=(0.5, 1.5))


LAWS = [
    ("poisson", FieldLaw("smooth", contrast=(1, 100))),
    ("poisson", FieldLaw("two-phase", contrast=(4, 4))),
    ("advection_diffusion", FieldLaw("smooth", contrast=(2, 10))),
    ("helmholtz", FieldLaw("smooth", variation=(0.1, 0.3))),
]


@pytest.mark.parametrize("system,law", LAWS)
def test_field_blocks_solve_their_pde_within_the_law(system, law):
    spec = SplitSpec(system=system, n_examples=12, resolution=32, field_law=law)
    b = generate_block(spec, 0, dtype=np.float64)
    assert b.coefficient_fields.shape == (12, len(law.columns(spec.pde)), 32, 32)
    fields = np.repeat(b.coefficients[:, :, None, None], 32, axis=2).repeat(32, axis=3)
    cols = [K11, K22, K12] if system != "helmholtz" else [W]
    fields[:, cols] = b.coefficient_fields
    r = residual(system, b.solutions, b.sources, fields)
    rel = np.linalg.norm(r, axis=(1, 2)) / np.linalg.norm(b.sources, axis=(1, 2))
    assert rel.max() < 1e-7 and np.all(b.extras["relative_residual"] <= law.tolerance)
    assert np.all(b.extras["iterations"] > 0)
    lo, hi = law.length
    assert np.all((b.extras["length"] >= lo) & (b.extras["length"] <= hi))
    if system == "helmholtz":
        w = b.coefficient_fields[:, 0]
        spread = np.abs(w / b.coefficients[:, W, None, None] - 1).max(axis=(1, 2))
        assert np.allclose(spread, b.extras["variation"], rtol=1e-5)
        assert np.abs(b.solutions).max() <= HELMHOLTZ_MAX_ABS
    else:
        det = fields[:, K11] * fields[:, K22] - fields[:, K12] ** 2
        measured = det.max(axis=(1, 2)) / det.min(axis=(1, 2))  # contrast^2 for K = a K0
        assert np.allclose(np.sqrt(measured), b.extras["contrast"], rtol=1e-4)
        assert np.all(b.extras["contrast"] >= law.contrast[0] * (1 - 1e-6))
        assert np.all(b.extras["contrast"] <= law.contrast[1] * (1 + 1e-6))
    if system == "advection_diffusion":  # Psi targets the reference operator; the field's is near
        assert np.all((b.psi > 0.2 * 0.99) & (b.psi < 1.0 * 1.01))
        assert np.allclose(b.extras["psi_field"], b.psi, rtol=0.5)


def test_field_blocks_are_reproducible_and_leave_constant_data_alone():
    spec = SplitSpec(system="poisson", n_examples=8, resolution=16, field_law=FieldLaw())
    a, b = generate_block(spec, 0), generate_block(spec, 0)
    assert np.array_equal(a.coefficient_fields, b.coefficient_fields)
    assert np.array_equal(a.solutions, b.solutions)
    plain = generate_block(SplitSpec(system="poisson", n_examples=8, resolution=16), 0)
    assert np.array_equal(plain.sources, a.sources)  # field draws come after the others


def _arrays(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][:] for k in f if isinstance(f[k], h5py.Dataset)}


def test_field_datasets_write_read_and_check(tmp_path, capsys):
    spec = SplitSpec(
        system="advection_diffusion",
        n_examples=20,
        resolution=16,
        block_size=8,
        field_law=FieldLaw("two-phase", contrast=(2, 20)),
    )
    one = write_split(spec, tmp_path / "one.h5", workers=1, progress=False)
    two = write_split(spec, tmp_path / "two.h5", workers=2, progress=False)
    a, b = _arrays(one), _arrays(two)
    assert set(a) == set(b) >= {"coefficient_fields", "contrast", "length", "iterations"}
    assert all(np.array_equal(a[k], b[k]) for k in a)
    with open_dataset(one) as r:
        assert r.has_fields and r.field_columns == ("k11", "k22", "k12")
        assert r.attrs["field_law"] == "two-phase" and list(r.attrs["contrast_range"]) == [2, 20]
        chunk = r.read(4, 9)
        unified = chunk.unified()
        assert unified.shape == (5, 6, 16, 16)
        assert np.array_equal(unified[:, :3], chunk.coefficient_fields)
        assert np.all(unified[:, 3] == chunk.coefficients[:, 3, None, None])
    assert main(["exact", "--input", str(one), "--check", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["max_relative_l2"] < 1e-5
    with h5py.File(one, "a") as f:
        f["coefficient_fields"][3, 0] *= 1.5  # another problem than the stored solution's
    assert main(["exact", "--input", str(one), "--check", "--quiet"]) == 1


def test_cli_makes_previews_and_refuses_misplaced_field_options(tmp_path, capsys):
    out = tmp_path / "h"
    argv = ["datagen", "helmholtz", "--out", str(out), "--n-train", "4", "--n-val", "0"]
    argv += ["--n-test", "0", "--resolution", "16", "--workers", "1", "--quiet"]
    assert main([*argv, "--field", "smooth", "--variation", "0.1", "0.2"]) == 0
    with open_dataset(out / "train.h5") as r:
        assert r.field_columns == ("w",) and list(r.attrs["variation_range"]) == [0.1, 0.2]
    png = tmp_path / "h.png"
    assert main(["preview", str(out / "train.h5"), "--out", str(png), "--per-level", "1"]) == 0
    assert png.stat().st_size > 10_000
    for extra, match in (
        (["--contrast", "1", "10"], "--contrast needs --field"),
        (["--field", "smooth", "--contrast", "1", "10"], "--contrast does not apply to helmholtz"),
        (["--field", "smooth", "--variation", "0.5", "2"], "variation must be below 1"),
    ):
        with pytest.raises(SystemExit):
            main([*argv, *extra])
        assert match in capsys.readouterr().err
