"""The command line: datagen, exact --check (on files in the authors' layout made by a
second implementation), preview, and clear errors."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from reference import diffusion_tensor, gaussian_source, solve_one

from pdeserve.cli import main


def authors_file(path, system, n_examples, n, seed):
    """A file as the authors' generator writes it: float32 fields/tensor[/other], no attributes."""
    rng = np.random.default_rng(seed)
    fields, tensor = [], []
    while len(fields) < n_examples:
        s = [0.2, 0.4, 0.6, 0.8][len(fields) * 4 // n_examples]
        p = rng.uniform(1e-3, 1, 144) * (rng.random(144) > s)
        f = gaussian_source(p, n, zero_mean=system != "helmholtz")
        if system == "helmholtz":
            w = int(rng.integers(1, 11))
            u = solve_one(f, 0.01, 0.01, 0.0, w=w)
            if np.abs(u).max() > 2:
                continue
            row = [0.01, w]
        else:
            lam = rng.uniform(0.05, 0.5) if system == "advection_diffusion" else 0.0
            k = 0.01 * (1 - lam) * diffusion_tensor(rng.uniform(1, 5), rng.uniform(0, 2 * np.pi))
            phi = rng.uniform(0, 2 * np.pi)
            v = (lam * np.cos(phi), lam * np.sin(phi))
            u = solve_one(f, k[0, 0], k[1, 1], k[0, 1], *v)
            u -= u.mean()
            row = [k[0, 0], k[1, 1], k[0, 1]] + (list(v) if system == "advection_diffusion" else [])
        fields.append([f, u])
        tensor.append(row)
    with h5py.File(path, "w") as h:
        h.create_dataset("fields", data=np.array(fields, dtype="<f4"))
        h.create_dataset("tensor", data=np.array(tensor, dtype="<f4"))
        if system == "advection_diffusion":
            h.create_dataset("other", data=np.full((n_examples, 1), 0.5, dtype="<f4"))
    return path


@pytest.mark.parametrize("system", ["poisson", "advection_diffusion", "helmholtz"])
def test_exact_check_agrees_with_authors_layout_files(tmp_path, system, capsys):
    path = authors_file(tmp_path / f"{system}.h5", system, 12, 128, seed=3)
    assert main(["exact", "--input", str(path), "--check", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "authors" and report["system"] == system and report["n"] == 12
    assert report["ok"] and report["max_relative_l2"] <= 1e-5


def test_exact_check_fails_on_wrong_solutions_and_writes_output(tmp_path, capsys):
    path = authors_file(tmp_path / "p.h5", "poisson", 8, 64, seed=4)
    with h5py.File(path, "a") as f:
        f["fields"][5, 1] *= 1.01
    assert (
        main(
            [
                "exact",
                "--input",
                str(path),
                "--check",
                "--quiet",
                "--output",
                str(tmp_path / "fixed.h5"),
            ]
        )
        == 1
    )
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and 5e-3 < report["max_relative_l2"] < 2e-2
    assert main(["exact", "--input", str(tmp_path / "fixed.h5"), "--check", "--quiet"]) == 0


def test_datagen_end_to_end(tmp_path, capsys):
    out = tmp_path / "helm"
    code = main(
        [
            "datagen",
            "helmholtz",
            "--out",
            str(out),
            "--n-train",
            "40",
            "--n-val",
            "8",
            "--n-test",
            "8",
            "--resolution",
            "32",
            "--omega",
            "1",
            "5",
            "--seed",
            "7",
            "--workers",
            "2",
            "--quiet",
        ]
    )
    assert code == 0
    assert "56 examples" in capsys.readouterr().out
    with h5py.File(out / "train.h5", "r") as f:
        assert f.attrs["seed"] == 7 and list(f.attrs["omega_range"]) == [1, 5]
        assert f["tensor"][:, 1].max() <= 5
    with h5py.File(out / "val.h5", "r") as v, h5py.File(out / "test.h5", "r") as t:
        assert not np.allclose(v["fields"][:], t["fields"][:])  # splits seeded apart
    assert main(["exact", "--input", str(out / "test.h5"), "--check", "--quiet"]) == 0
    png = tmp_path / "p.png"
    assert main(["preview", str(out / "train.h5"), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_preview_of_authors_file(tmp_path):
    path = authors_file(tmp_path / "ad.h5", "advection_diffusion", 8, 32, seed=5)
    png = tmp_path / "ad.png"
    assert main(["preview", str(path), "--out", str(png), "--per-level", "1"]) == 0
    assert png.stat().st_size > 10_000


@pytest.mark.parametrize(
    "argv,message",
    [
        ("poisson --n-train 1 --omega 1 3", "--omega does not apply to poisson"),
        ("advection_diffusion --n-train 1 --ratio 2 1", "ratio range"),
        ("poisson --n-train 0", "nothing to generate"),
        ("poisson --n-train -3", "must be >= 0"),
        ("poisson --n-train 3 --resolution 31", "resolution must be even"),
        ("burgers --n-train 1", "invalid choice"),
    ],
)
def test_bad_datagen_arguments(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    system, *rest = argv.split()
    with pytest.raises(SystemExit) as e:
        main(["datagen", system, "--out", "x", "--n-val", "0", "--n-test", "0", *rest])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_exact_needs_output_or_check(capsys):
    with pytest.raises(SystemExit) as e:
        main(["exact", "--input", "x.h5"])
    assert e.value.code == 2
    assert "give --output FILE, --check, or both" in capsys.readouterr().err


def test_exact_on_missing_file(tmp_path, capsys):
    assert main(["exact", "--input", str(tmp_path / "none.h5"), "--check"]) == 2
    assert "no dataset" in capsys.readouterr().err


def test_console_script_lists_commands():
    out = subprocess.run(
        [sys.executable, "-m", "pdeserve.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("datagen", "exact", "preview", "serve"):
        assert command in out
    bad = subprocess.run(
        [sys.executable, "-m", "pdeserve.cli", "frobnicate"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "unknown command" in bad.stderr


def test_physics_layer_imports_no_learning_or_serving_stack():
    code = (
        "import sys, datagen, datagen.cli, datagen.pipeline, datagen.preview, pdeserve.cli; "
        "bad = [m for m in ('torch', 'onnxruntime', 'ray', 'pydantic') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_datagen_on_a_private_ray_instance(tmp_path, capsys):
    """--ray-address local starts Ray for the run and shuts it down after; same data as local."""
    import ray

    common = [
        "advection_diffusion",
        "--n-train",
        "20",
        "--n-val",
        "0",
        "--n-test",
        "10",
        "--resolution",
        "32",
        "--quiet",
    ]
    assert main(["datagen", *common, "--out", str(tmp_path / "ray"), "--ray-address", "local"]) == 0
    assert not ray.is_initialized()
    assert main(["datagen", *common, "--out", str(tmp_path / "here"), "--workers", "1"]) == 0
    for split in ("train", "test"):
        with (
            h5py.File(tmp_path / "ray" / f"{split}.h5", "r") as a,
            h5py.File(tmp_path / "here" / f"{split}.h5", "r") as b,
        ):
            assert np.array_equal(a["fields"][:], b["fields"][:])
            assert np.array_equal(a["other"][:], b["other"][:])
