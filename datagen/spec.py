"""What a dataset is: a typed, validated description shared by the CLI and the Ray tasks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from datagen.media import FIELD_KINDS
from datagen.systems import System, get_system

SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Examples per seeded block. Part of the data's definition: the same seed and
#: block size give the same dataset whatever the number of workers.
BLOCK_SIZE = 256

DEFAULT_EIG = (1.0, 5.0)
DEFAULT_RATIO = (0.2, 1.0)
DEFAULT_OMEGA = (1, 10)
DEFAULT_CONTRAST = (1.0, 100.0)
DEFAULT_LENGTH = (0.05, 0.3)
DEFAULT_VARIATION = (0.1, 0.3)
DEFAULT_FIELD_TOLERANCE = 1e-8


@dataclass(frozen=True)
class SamplingRanges:
    """Coefficient ranges: diffusion eigenvalue e, advection/diffusion ratio Psi, Helmholtz w."""

    eig: tuple[float, float] = DEFAULT_EIG
    ratio: tuple[float, float] = DEFAULT_RATIO
    omega: tuple[int, int] = DEFAULT_OMEGA

    def __post_init__(self) -> None:
        e1, e2 = self.eig
        if not (0 < e1 <= e2):
            raise ValueError(f"eigenvalue range must satisfy 0 < A <= B, got {self.eig}")
        p1, p2 = self.ratio
        if not (0 < p1 <= p2):
            raise ValueError(f"ratio range must satisfy 0 < A <= B, got {self.ratio}")
        w1, w2 = self.omega
        if int(w1) != w1 or int(w2) != w2 or not (w1 <= w2):
            raise ValueError(f"omega range must be integers A <= B, got {self.omega}")

    def for_system(self, system: System) -> dict[str, tuple]:
        """The ranges a system's sampler uses (written to the file's attributes)."""
        return {
            "poisson": {"eig": self.eig},
            "advection_diffusion": {"eig": self.eig, "ratio": self.ratio},
            "helmholtz": {"omega": self.omega},
        }[system.name]


def _check_range(name: str, pair: tuple[float, float], low: float, strict: bool = True) -> None:
    a, b = pair
    ok = (a > low if strict else a >= low) and a <= b
    if not ok:
        bound = ">" if strict else ">="
        raise ValueError(f"{name} range must satisfy A {bound} {low:g} and A <= B, got {pair}")


@dataclass(frozen=True)
class FieldLaw:
    """Coefficient fields of a dataset (see :mod:`datagen.media` for the laws).

    Diffusion systems (poisson, advection_diffusion): a conductivity field of
    ``kind`` with contrast in ``contrast`` multiplies the system's K0.
    Helmholtz: w(x) = w0 (1 + delta s(x)) with delta in ``variation``. The
    correlation length is drawn from ``length``; the exact solves run to the
    relative residual ``tolerance``.
    """

    kind: str = "smooth"
    contrast: tuple[float, float] = DEFAULT_CONTRAST
    length: tuple[float, float] = DEFAULT_LENGTH
    variation: tuple[float, float] = DEFAULT_VARIATION
    tolerance: float = DEFAULT_FIELD_TOLERANCE

    def __post_init__(self) -> None:
        if self.kind not in FIELD_KINDS:
            raise ValueError(f"field law must be one of {FIELD_KINDS}, got {self.kind!r}")
        _check_range("contrast", self.contrast, 1.0, strict=False)
        _check_range("correlation length", self.length, 0.0)
        _check_range("variation", self.variation, 0.0, strict=False)
        if self.variation[1] >= 1:
            raise ValueError(f"variation must be below 1 (w keeps its sign), got {self.variation}")
        if not 0 < self.tolerance < 1:
            raise ValueError(f"tolerance must be in (0, 1), got {self.tolerance}")

    @staticmethod
    def columns(system: System) -> tuple[str, ...]:
        """The unified coefficients this law makes vary (stored as fields)."""
        return ("w",) if system.name == "helmholtz" else ("k11", "k22", "k12")

    def for_system(self, system: System) -> dict:
        """The law's attributes for a system's file."""
        d = {"field_law": self.kind, "length_range": list(self.length)}
        if system.name == "helmholtz":
            d["variation_range"] = list(self.variation)
        else:
            d["contrast_range"] = list(self.contrast)
        d["solver_tolerance"] = self.tolerance
        d["field_columns"] = list(self.columns(system))
        return d


@dataclass(frozen=True)
class SplitSpec:
    """One dataset file: a system, a split, a size, a grid and a seed."""

    system: str
    n_examples: int
    split: str = "train"
    resolution: int = 128
    seed: int = 0
    ranges: SamplingRanges = field(default_factory=SamplingRanges)
    block_size: int = BLOCK_SIZE
    field_law: FieldLaw | None = None

    def __post_init__(self) -> None:
        get_system(self.system)
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.n_examples < 1:
            raise ValueError(f"n_examples must be >= 1, got {self.n_examples}")
        if self.resolution < 16 or self.resolution % 2:
            raise ValueError(f"resolution must be even and >= 16, got {self.resolution}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")

    @property
    def pde(self) -> System:
        return get_system(self.system)

    @property
    def n_blocks(self) -> int:
        return -(-self.n_examples // self.block_size)

    def block_bounds(self, block: int) -> tuple[int, int]:
        start = block * self.block_size
        return start, min(start + self.block_size, self.n_examples)

    def with_split(self, split: str, n_examples: int) -> SplitSpec:
        return replace(self, split=split, n_examples=n_examples)

    def as_attrs(self) -> dict:
        d = asdict(self)
        d.pop("ranges")
        d.pop("field_law")
        for name, value in self.ranges.for_system(self.pde).items():
            d[f"{name}_range"] = list(value)
        if self.field_law is not None:
            d.update(self.field_law.for_system(self.pde))
        return d
