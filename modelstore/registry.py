"""The model registry: the contract between training and serving.

Layout: ``<root>/<name>/<version>/`` holding ``model.onnx`` (coefficients as
(B, 6) scalars), ``model-fields.onnx`` (as (B, 6, n, n) fields; models exported
before fields existed have none: the card's ``graphs`` says),
``weights.safetensors`` and ``card.json``. The root is a local folder or any
fsspec URL (``memory://``, ``s3://``, ...). Versions are integers, immutable
once published: a publish writes a hidden temporary folder and renames it to
the next free version, so a crash never leaves a half model visible and two
concurrent publishes of one name get distinct versions. Loading verifies the
SHA-256 of every file named in the card; nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CARD = "card.json"
ONNX = "model.onnx"
#: The graph for coefficient fields, (B, 6, n, n); ``ONNX`` takes (B, 6) scalars.
ONNX_FIELDS = "model-fields.onnx"
WEIGHTS = "weights.safetensors"
CARD_FORMAT = "pdeserve-model"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"


#: The registry that ships with the repository: it holds the default model.
BUNDLED_REGISTRY = Path(__file__).resolve().parents[1] / "models"
#: Where models are looked up by name and published to, unless told otherwise.
DEFAULT_REGISTRY = os.environ.get("PDESERVE_REGISTRY", str(BUNDLED_REGISTRY))
#: The name served by default.
DEFAULT_MODEL = os.environ.get("PDESERVE_MODEL", "default")

FileMaker = Callable[["ModelCard"], dict[str, bytes]]


class RegistryError(ValueError):
    """A model that is missing, malformed or tampered with.

    ``public`` is the message for a remote user: it names the model, never where the
    registry lies on the server (the full message, for local use, may say).
    """

    def __init__(self, message: str, public: str | None = None):
        super().__init__(message)
        self.public = message if public is None else public


class Architecture(BaseModel):
    """What rebuilds the network: the class and its constructor arguments."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")
    class_: str = Field(alias="class")
    args: dict[str, Any]
    capabilities: dict[str, bool] = {}
    n_parameters: int


class Normalization(BaseModel):
    source_ref: float = Field(gt=0)
    # six per unified channel; the physical layout appends six of its own
    coefficient_ref: list[float] = Field(min_length=6, max_length=12)
    solution_ref: float = Field(gt=0)
    unit_ref: float | None = Field(None, gt=0)  # the physical layout's solution unit


class FieldEnvelope(BaseModel):
    """Coefficient fields seen in training for one system (None: not seen or not recorded).

    ``contrast`` and ``variation`` are defined in :mod:`datagen.coefficients`
    (max/min of sqrt(det K); max |w / mean w - 1|), ``length`` is the field laws'
    correlation length where the files record it.
    """

    n_examples: int  # examples with coefficient fields
    laws: list[str]  # smooth, two-phase, or "unrecorded" for files without a law
    contrast: tuple[float, float] | None = None
    variation: tuple[float, float] | None = None
    length: tuple[float, float] | None = None


class SourceEnvelope(BaseModel):
    """Statistics of the training sources for one system: each a (min, max) over them
    (defined in :mod:`modelstore.sources`: peak |f|, its RMS, and the shares of its
    mean-free energy at wavenumbers |k| <= 2.5 and above 8, in cycles per unit length).
    ``origin``: "law" where drawn from datagen's sampler of the training data's law (the
    paper's Gaussian sources), "observed" where read from the training files,
    "law+observed" for a mix."""

    n_examples: int
    peak: tuple[float, float]
    rms: tuple[float, float]
    large_scale: tuple[float, float]
    fine_scale: tuple[float, float]
    origin: Literal["law", "observed", "law+observed"] = "observed"


class Envelope(BaseModel):
    """Coefficient ranges seen in training for one system (None where the term is absent).

    For field examples eig, psi and omega describe the reference coefficients (the
    log-Euclidean mean of K, Psi of the reference operator, the mean of w).
    """

    n_examples: int
    eig: tuple[float, float] | None = None  # diffusion anisotropy, largest / smallest eigenvalue
    psi: tuple[float, float] | None = None  # advection / diffusion ratio
    omega: tuple[float, float] | None = None  # Helmholtz w
    field: FieldEnvelope | None = None  # None: constant coefficients only
    # The training sources' statistics; None on cards made before they were recorded
    # (then the service checks no source).
    source: SourceEnvelope | None = None
    # Per range (eig, psi, omega, contrast, variation, length): "law" where it is the
    # sampling law the training files record, "observed" where it is the span of the
    # examples, "law+observed" for a mix of files. Empty on cards made before it existed.
    sources: dict[str, str] = {}


#: The models' input layouts by name and the version a card records (defined in
#: training/layers/normalization.py): 1 ``values`` (cards before the field existed),
#: 2 ``physical`` (log a, the tensor's shape, the physical unit).
INPUT_LAYOUTS: dict[str, int] = {"values": 1, "physical": 2}


class ModelCard(BaseModel):
    """Everything a replica needs to serve a model and a person needs to trust it."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["pdeserve-model"] = CARD_FORMAT
    name: str | None = None  # set at publish
    version: int | None = None  # set at publish
    model: Architecture
    normalization: Normalization
    # The input layout's version (INPUT_LAYOUTS): a runner refuses one it does not know.
    inputs: int = 1
    resolution: int | None = None  # the grid it was trained on (None: not recorded)
    envelope: dict[str, Envelope] = {}
    lineage: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    # The error each metric is meant to reach (same keys as ``metrics``): met where
    # metrics[key] <= targets[key]; the card says what was aimed at beside what was measured.
    targets: dict[str, float] = {}
    parent: str | None = None  # "name@version" of the model this one was fine-tuned from
    notes: str | None = None  # what a reader should know: the scale training reached, ...
    created: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    files: dict[str, str] = {}  # file name -> SHA-256
    # Which ONNX file takes which coefficients: "constant" (B, 6), "fields" (B, 6, n, n).
    graphs: dict[Literal["constant", "fields"], str] = {"constant": ONNX}

    @field_validator("inputs")
    @classmethod
    def _known_layout(cls, v: int) -> int:
        if v not in INPUT_LAYOUTS.values():
            raise ValueError(
                f"input layout version {v} is not one this pdeserve knows "
                f"({sorted(INPUT_LAYOUTS.values())}): a newer pdeserve published this model"
            )
        return v

    @model_validator(mode="after")
    def _layout_matches_model(self) -> ModelCard:
        named = self.model.args.get("inputs", "values")
        if INPUT_LAYOUTS.get(named) != self.inputs:
            raise ValueError(
                f"the model's input layout {named!r} is not the card's version {self.inputs}"
            )
        return self

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def digest(self) -> str:
        """SHA-256 of the card without its file list (which holds the ONNX file's own hash)."""
        body = self.model_dump_json(exclude={"files"}, by_alias=True)
        return sha256_bytes(body.encode())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checked_files(card: ModelCard, read: Callable[[str], bytes], where: str) -> dict[str, bytes]:
    """Every file ``card`` lists, read by name with ``read`` and checked against its SHA-256
    (``where``: the model's place, for the error): the one check of published files."""
    files = {}
    for filename, digest in card.files.items():
        data = read(filename)
        if sha256_bytes(data) != digest:
            raise RegistryError(
                f"{where}/{filename} does not match its checksum in the card: the file was "
                "changed after publishing; refusing to load it"
            )
        files[filename] = data
    return files


def parse_ref(ref: str) -> tuple[str, str]:
    """``name``, ``name@latest`` or ``name@3`` -> (name, version or 'latest')."""
    name, _, version = ref.partition("@")
    if not re.match(NAME_PATTERN, name):
        raise RegistryError(f"invalid model name {name!r} (lower-case letters, digits, _ . -)")
    version = version or "latest"
    if version != "latest" and not version.isdigit():
        raise RegistryError(f"invalid version {version!r}: an integer or 'latest'")
    return name, version


class Registry:
    def __init__(self, root: str | Path):
        self.root = str(root)
        self.fs, path = fsspec.core.url_to_fs(self.root)
        self.path = path.rstrip("/")

    def _join(self, *parts: str | int) -> str:
        return "/".join([self.path, *map(str, parts)])

    # -- reading -------------------------------------------------------------------------

    def names(self) -> list[str]:
        if not self.fs.exists(self.path):
            return []
        return sorted(
            Path(p).name
            for p in self.fs.ls(self.path, detail=False)
            if self.fs.isdir(p) and not Path(p).name.startswith(".")
        )

    def versions(self, name: str) -> list[int]:
        folder = self._join(name)
        if not self.fs.exists(folder):
            return []
        return sorted(
            int(Path(p).name) for p in self.fs.ls(folder, detail=False) if Path(p).name.isdigit()
        )

    def resolve(self, ref: str) -> tuple[str, int]:
        name, version = parse_ref(ref)
        versions = self.versions(name)
        if not versions:
            raise RegistryError(
                f"no model {name!r} in {self.root}", public=f"no model {name!r} in the registry"
            )
        if version == "latest":
            return name, versions[-1]
        if int(version) not in versions:
            raise RegistryError(f"{name} has no version {version}; versions: {versions}")
        return name, int(version)

    def card(self, ref: str) -> ModelCard:
        name, version = self.resolve(ref)
        return self._read_card(name, version)

    def _read_card(self, name: str, version: int) -> ModelCard:
        raw = self.fs.cat_file(self._join(name, version, CARD))
        try:
            return ModelCard.model_validate_json(raw)
        except ValueError as e:
            raise RegistryError(f"{name}@{version}: malformed card: {e}") from None

    def read_files(self, ref: str) -> tuple[ModelCard, dict[str, bytes]]:
        """The card and every file it lists, each checked against its SHA-256."""
        name, version = self.resolve(ref)
        card = self._read_card(name, version)
        read = lambda filename: self.fs.cat_file(self._join(name, version, filename))  # noqa: E731
        return card, checked_files(card, read, f"{name}@{version}")

    # -- writing -------------------------------------------------------------------------

    def publish(self, name: str, card: ModelCard, files: FileMaker | dict[str, bytes]) -> ModelCard:
        """Write a new immutable version of ``name``; returns the card as published.

        ``files`` may be a function of the card being published (name and version set),
        so a file can carry its own version, as the ONNX metadata does.
        """
        parse_ref(name)
        make = files if callable(files) else (lambda _card: files)
        staging = self._join(name, f".staging-{uuid.uuid4().hex}")
        try:
            while True:
                version = (self.versions(name) or [0])[-1] + 1
                draft = card.model_copy(update={"name": name, "version": version, "files": {}})
                content = make(draft)
                if CARD in content:
                    raise RegistryError("card.json is written by the registry")
                self.fs.makedirs(staging, exist_ok=True)
                for filename, data in content.items():
                    self.fs.pipe_file(f"{staging}/{filename}", data)
                published = draft.model_copy(
                    update={"files": {f: sha256_bytes(d) for f, d in content.items()}}
                )
                card_json = published.model_dump_json(indent=2, by_alias=True)
                self.fs.pipe_file(f"{staging}/{CARD}", card_json.encode())
                if self._claim(staging, self._join(name, version)):
                    return published
        finally:
            if self.fs.exists(staging):
                self.fs.rm(staging, recursive=True)

    def write_readme(self, name: str, text: str) -> None:
        """``NAME/README.md``: the model card for people (see :mod:`modelstore.modelcard`),
        written beside the versions, replaced whole."""
        target = self._join(name, "README.md")
        if isinstance(self.fs, LocalFileSystem):
            tmp = f"{target}.{uuid.uuid4().hex[:8]}.tmp"
            Path(tmp).write_text(text)
            os.replace(tmp, target)
        else:
            self.fs.pipe_file(target, text.encode())

    def _claim(self, staging: str, target: str) -> bool:
        """Rename staging to target unless another publish took that version first."""
        if self.fs.exists(target):
            return False
        if isinstance(self.fs, LocalFileSystem):
            try:
                os.rename(staging, target)  # atomic; refuses a target that is not empty
            except OSError:
                return False
            return True
        self.fs.mv(staging, target, recursive=True)  # object stores have no atomic rename
        return True
