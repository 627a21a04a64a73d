from pathlib import Path

import pytest

from datagen.pipeline import write_split
from datagen.spec import SplitSpec


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
