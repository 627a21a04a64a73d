"""Physics layer of pdeserve: the paper's three PDE systems, an exact batched
spectral solver, vectorised samplers and HDF5 dataset files.

Imports numpy, scipy and h5py only (ray, lazily, to fan shards out on a
cluster); nothing else of pdeserve.
"""

from datagen.solver import apply, residual, solve
from datagen.systems import (
    ADVECTION_DIFFUSION,
    COEFFICIENT_NAMES,
    DIFFUSION_SCALE,
    HELMHOLTZ,
    POISSON,
    SYSTEMS,
    System,
    get_system,
)

__version__ = "0.1.0"

__all__ = [
    "ADVECTION_DIFFUSION",
    "COEFFICIENT_NAMES",
    "DIFFUSION_SCALE",
    "HELMHOLTZ",
    "POISSON",
    "SYSTEMS",
    "System",
    "__version__",
    "apply",
    "get_system",
    "residual",
    "solve",
]
