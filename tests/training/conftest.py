from pathlib import Path

import pytest

from datagen.pipeline import write_split
from datagen.spec import SamplingRanges, SplitSpec
from training.export import export
from training.pretrain import main as pretrain_main


@pytest.fixture(scope="session")
def small_files(tmp_path_factory) -> dict[str, Path]:
    """Train files of the three systems at 32x32 (300 examples each: not a multiple of chunks)."""
    root = tmp_path_factory.mktemp("data")
    return {
        system: write_split(
            SplitSpec(system=system, n_examples=300, resolution=32, seed=3),
            root / f"{system}.h5",
            progress=False,
        )
        for system in ("poisson", "advection_diffusion", "helmholtz")
    }


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> str:
    """The smoke preset pre-trained (Poisson e in (1, 5), 32^2) and published."""
    root = tmp_path_factory.mktemp("base")
    code = pretrain_main(
        [
            "--config",
            "smoke",
            "--no-ray",
            "--storage",
            str(root / "runs"),
            "--run-name",
            "base",
            "--quiet",
        ]
    )
    assert code == 0
    export(root / "runs" / "base" / "model", "smoke", str(root / "registry"))
    return str(root / "registry")


@pytest.fixture(scope="session")
def shifted(tmp_path_factory) -> dict[str, str]:
    """The downstream task: Poisson with e in (5, 10) (the paper's SYS-1 shift)."""
    root = tmp_path_factory.mktemp("shifted")
    files = {}
    for split, n in (("train", 64), ("val", 32), ("test", 32)):
        spec = SplitSpec(
            system="poisson",
            n_examples=n,
            split=split,
            resolution=32,
            seed=3,
            ranges=SamplingRanges(eig=(5.0, 10.0)),
        )
        files[split] = str(write_split(spec, root / f"{split}.h5", progress=False))
    return files
