"""Export a trained model to ONNX and publish it to the registry.

    python -m training.export --checkpoint RUN/model --name NAME [--registry ROOT]

Two graphs from the same weights: ``model.onnx`` takes raw inputs ``source``
(B, n, n) and ``coefficients`` (B, 6) (the constant channels as a bias and the
first block on the source alone: the fast path), ``model-fields.onnx`` takes
``coefficients`` (B, 6, n, n) fields on the source's grid; both return
``solution`` (B, n, n). Normalisation and the output scale are inside them,
the batch axis is dynamic, and the spectral layers are matrix products (no
``DFT`` node). Every export checks ONNX Runtime against torch at batch 1, 7 and
64, for both graphs, before anything is published; the card's ``graphs`` names
the files.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import torch

from datagen.dataset import open_dataset
from modelstore.modelcard import render as render_readme
from modelstore.registry import (
    DEFAULT_REGISTRY,
    ONNX,
    ONNX_FIELDS,
    WEIGHTS,
    ModelCard,
    Registry,
    RegistryError,
)
from modelstore.sources import LAW_EXAMPLES, law_sources, source_envelope
from training.checkpoint import load_model, read_card, weights_bytes
from training.models.surrogate import PDESurrogate

PARITY_BATCHES = (1, 7, 64)
PARITY_RTOL = 1e-5
INPUTS = ("source", "coefficients")


class ParityError(RuntimeError):
    """ONNX Runtime and torch disagree beyond the tolerance."""


FLOAT16_NOTE = "Spectral weights rounded to float16 (stored so in the graphs)."
#: Parameters at least this large are rounded by :func:`round_to_float16`.
HALF_MIN_ELEMENTS = 4096


def round_to_float16(model: torch.nn.Module) -> None:
    """Round the model's large parameters (the spectral weights) to float16 values, kept in
    float32: the graphs can then hold them as float16 exactly, half the bytes, and the
    model that is tested and published is the one the graphs compute."""
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() >= HALF_MIN_ELEMENTS:
                p.copy_(p.half().float())


def halve_initializers(graph: onnx.ModelProto) -> None:
    """Store large float32 initializers whose values are all float16 values as float16,
    each followed by a Cast back to float32 (folded when ONNX Runtime loads the graph)."""
    casts = []
    for init in graph.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        array = onnx.numpy_helper.to_array(init)
        if array.size < HALF_MIN_ELEMENTS:
            continue
        half = array.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), array):
            continue
        name = init.name
        init.CopyFrom(onnx.numpy_helper.from_array(half, f"{name}.f16"))
        casts.append(
            onnx.helper.make_node("Cast", [f"{name}.f16"], [name], to=onnx.TensorProto.FLOAT)
        )
    for node in reversed(casts):
        graph.graph.node.insert(0, node)


def export_onnx(
    model: PDESurrogate, resolution: int, metadata: dict[str, str], *, fields: bool = False
) -> bytes:
    """The model as ONNX bytes (dynamic batch), with ``metadata`` in its properties; the
    graph for (B, 6) coefficients, or with ``fields`` for (B, 6, n, n). Large weights that
    are float16 values (:func:`round_to_float16`) are stored as float16."""
    model = model.eval().cpu()
    model.set_spectral_path("dft")  # a model trained on the fft path: same weights, MatMuls
    source, coefficients = example_inputs(2, resolution, fields=fields)
    with torch.no_grad():
        model(source, coefficients)  # builds the DFT matrices, so they export as constants
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # Expected, and harmless here: the channel counts and the grid are read as ints on
        # purpose (constants of the graph; the batch axis stays dynamic), and the Slice ops
        # of the DFT matrices are not folded (they are already constants). Any other warning
        # still shows.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        # The TorchScript exporter on purpose (dynamo=False): its graphs are MatMul-only
        # and pass the parity checks; run as `python -m training.export` it said so each time.
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based")
        path = Path(tmp) / ONNX
        torch.onnx.export(
            model,
            (source, coefficients),
            str(path),
            input_names=list(INPUTS),
            output_names=["solution"],
            dynamic_axes={k: {0: "batch"} for k in (*INPUTS, "solution")},
            opset_version=17,
            dynamo=False,
        )
        graph = onnx.load(str(path))
    halve_initializers(graph)
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value)
    if any(node.op_type == "DFT" for node in graph.graph.node):
        raise ParityError("the exported graph has a DFT node")
    return graph.SerializeToString()


def _smooth(batch: int, n: int, g: torch.Generator) -> torch.Tensor:
    k = torch.fft.rfftfreq(n) * n
    spectrum = torch.randn(batch, n, n // 2 + 1, 2, generator=g)
    decay = 1 / (1 + k[None, :] ** 2 + (torch.fft.fftfreq(n) * n)[:, None] ** 2)
    return torch.fft.irfft2(torch.view_as_complex(spectrum) * decay, s=(n, n))


def example_inputs(
    batch: int, n: int, seed: int = 0, *, fields: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random sources and valid coefficients of each system, cycling through them;
    with ``fields``, (B, 6, n, n) coefficient fields (K times a smooth positive field, w
    varied by up to 30%)."""
    g = torch.Generator().manual_seed(seed)
    source = _smooth(batch, n, g)
    coefficients = torch.zeros(batch, 6)
    kind = torch.arange(batch) % 3
    eig = 1 + 4 * torch.rand(batch, generator=g)
    coefficients[:, 0], coefficients[:, 1] = 0.01, 0.01 * eig
    coefficients[kind == 1, 3:5] = 0.05 * torch.randn(int((kind == 1).sum()), 2, generator=g)
    coefficients[kind == 2, :2] = 0.01
    coefficients[kind == 2, 5] = torch.randint(
        1, 11, (int((kind == 2).sum()),), generator=g
    ).float()
    if not fields:
        return source.float(), coefficients
    s = _smooth(batch, n, g)
    s = s / s.abs().amax(dim=(1, 2), keepdim=True)  # in [-1, 1]
    out = coefficients[:, :, None, None].repeat(1, 1, n, n)
    out[:, :3] *= torch.exp(s)[:, None]  # K = a(x) K0, contrast up to e^2
    out[:, 5] *= 1 + 0.3 * s
    return source.float(), out.float()


def check_parity(
    model: PDESurrogate, onnx_bytes: bytes, resolution: int, *, fields: bool = False
) -> dict[int, float]:
    """Relative L2 between ONNX Runtime and the torch model per batch size (on coefficient
    fields with ``fields``); raises over the tolerance.

    The torch side runs in float64, the model's function without rounding: two float32
    evaluations in different orders (the graph's sandwich products, torch's GEMMs) each
    carry rounding of a few 1e-6 on trained weights, and against each other they came out
    at 1.02e-5 on a trained fno-1m. Some trained models are worse conditioned than that:
    a mixed-system fno-64k's own float32 torch forward is 1.6e-5 from float64 at batch 1.
    No float32 program can do better, so the tolerance is ``PARITY_RTOL`` or twice the
    torch float32 error, whichever is larger: the graph must be as exact as the model's
    float32 arithmetic allows.
    """
    import copy

    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    reference = copy.deepcopy(model).double().eval()
    errors = {}
    for batch in PARITY_BATCHES:
        source, coefficients = example_inputs(batch, resolution, seed=batch, fields=fields)
        (got,) = session.run(None, {"source": source.numpy(), "coefficients": coefficients.numpy()})
        with torch.no_grad():
            want = reference(source.double(), coefficients.double()).numpy()
            float32 = model(source, coefficients).numpy()
        scale = np.linalg.norm(want)
        errors[batch] = float(np.linalg.norm(got - want) / scale)
        floor = float(np.linalg.norm(float32 - want) / scale)
        tolerance = max(PARITY_RTOL, 2 * floor)
        if not errors[batch] <= tolerance:
            on = " on coefficient fields" if fields else ""
            raise ParityError(
                f"ONNX Runtime differs from torch by {errors[batch]:.2e} (relative L2) at batch "
                f"{batch}{on}; the tolerance is {tolerance:.1e} (the larger of "
                f"{PARITY_RTOL:.0e} and twice torch's own float32 error, {floor:.1e})"
            )
    return errors


def card_from_checkpoint(directory: Path, parent: str | None) -> ModelCard:
    card = read_card(directory)
    if card.resolution is None:
        raise ValueError(f"{directory}: the card records no training resolution")
    now = datetime.now(timezone.utc)
    return card.model_copy(update={"parent": parent, "files": {}, "created": now})


def with_source_envelopes(card: ModelCard) -> ModelCard:
    """``card`` with each system's training-source statistics (:mod:`modelstore.sources`)
    from the training data its lineage names: a datagen spec (``generate``) is the paper's
    law, drawn afresh at the card's resolution (:data:`LAW_EXAMPLES` sources); a file is
    read (its first :data:`LAW_EXAMPLES` sources). Where a training file cannot be read,
    nobody can tell which system's sources it held: the card then records none, as a card
    whose lineage names no training data (the service checks no source against it)."""
    law: set[str] = set()
    observed: dict[str, list[np.ndarray]] = {}
    for entry in card.lineage.get("train") or []:
        if "generate" in entry:
            law.add(entry["generate"]["system"])
        for path in entry.get("files") or []:
            try:
                with open_dataset(Path(path).expanduser()) as reader:
                    sources = reader.fields[: min(len(reader), LAW_EXAMPLES), 0]
                    observed.setdefault(reader.system.name, []).append(sources)
            except (FileNotFoundError, ValueError) as e:
                print(f"no source envelope: a training file cannot be read ({e})")
                return card
    envelope = dict(card.envelope)
    for system, env in card.envelope.items():
        if env.source is not None or (system not in law and system not in observed):
            continue
        parts = observed.get(system, [])
        if system in law:
            parts.append(law_sources(system, card.resolution, LAW_EXAMPLES))
        kinds = (("law", system in law), ("observed", system in observed))
        origin = "+".join(kind for kind, here in kinds if here)
        source = source_envelope(np.concatenate(parts), origin)
        envelope[system] = env.model_copy(update={"source": source})
    return card.model_copy(update={"envelope": envelope})


def onnx_runner(model: PDESurrogate, card: ModelCard, *, fields: bool, threads: int | None = None):
    """The model's exported graph in ONNX Runtime, as served (constant or fields input)."""
    from modelstore.runner import OnnxSurrogate

    graph = export_onnx(model, card.resolution, {}, fields=fields)
    return OnnxSurrogate(card, graph, threads=threads, fields=fields)


def test_metrics(
    model: PDESurrogate, card: ModelCard, files: list[Path], threads: int | None = None
) -> dict[str, float]:
    """Mean relative L2 of the exported graphs on test files (each file through the graph
    for its kind of coefficients): per system (and field law) and overall."""
    from modelstore.evaluate import evaluate, has_fields

    runners = {}
    per_system, total, count = {}, 0.0, 0
    for path in files:
        fields = has_fields(str(path))
        if fields not in runners:
            runners[fields] = onnx_runner(model, card, fields=fields, threads=threads)
        result = evaluate(runners[fields], str(path), progress=False)
        for system, value in result["per_system"].items():
            per_system[f"test_rel_l2/{system}"] = value
        total += result["mean_relative_l2"] * result["n"]
        count += result["n"]
    return {**per_system, "test_rel_l2/all": total / count}


def parse_targets(pairs: list[str]) -> dict[str, float]:
    """``KEY=ERROR`` pairs (KEY as in the test metrics: ``poisson``,
    ``poisson-smooth(1,10)``) -> the card's targets, keyed like its metrics."""
    targets = {}
    for pair in pairs:
        key, sep, value = pair.rpartition("=")
        try:
            error = float(value)
        except ValueError:
            error = -1.0
        if not sep or not key or not error > 0:
            raise ValueError(f"a target is KEY=ERROR with ERROR > 0, got {pair!r}")
        targets[f"test_rel_l2/{key}"] = error
    return targets


def target_report(card: ModelCard) -> str:
    """One line per target: the error measured, the target, met or missed."""
    lines = []
    for key, target in card.targets.items():
        error = card.metrics[key]
        verdict = "met" if error <= target else f"missed ({error / target:.1f}x)"
        lines.append(f"  {key.split('/', 1)[1]:<26} {error:.2e}  target {target:.1e}  {verdict}")
    return "\n".join(lines)


def target_summary(card: ModelCard) -> str:
    """A sentence for the card's notes: how many targets were met, and the misses with their
    numbers."""
    missed = [
        f"{key.split('/', 1)[1]} {card.metrics[key]:.2e} (target {target:.1e})"
        for key, target in card.targets.items()
        if card.metrics[key] > target
    ]
    met = len(card.targets) - len(missed)
    tail = f"; missed: {', '.join(missed)}" if missed else ""
    return f"Error targets met: {met} of {len(card.targets)}{tail}."


def export(
    checkpoint: Path,
    name: str,
    registry: str,
    parent: str | None = None,
    test: list[Path] | None = None,
    notes: str | None = None,
    targets: dict[str, float] | None = None,
    float16: bool = False,
    graphs: tuple[str, ...] = ("constant", "fields"),
    weights_file: bool = True,
) -> ModelCard:
    """Publish the model at ``checkpoint`` as ``name``: its ONNX graphs (``graphs``: a
    specialist of field problems may ship its fields graph alone), checked against torch,
    its weights unless ``weights_file`` is False (then nothing can be fine-tuned from it),
    and a card with the test errors and targets."""
    model = load_model(checkpoint)
    if not isinstance(model, PDESurrogate):
        raise ValueError(f"{checkpoint} holds a {type(model).__name__}, not a PDESurrogate")
    model.eval()
    card = with_source_envelopes(card_from_checkpoint(checkpoint, parent))
    if notes:
        card.notes = notes
    weights = (checkpoint / WEIGHTS).read_bytes()
    if float16:  # what is tested, checked and published: the rounded model
        round_to_float16(model)
        weights = weights_bytes(model)
        card.notes = " ".join(filter(None, [card.notes, FLOAT16_NOTE]))
    checked: dict[str, float] = {}

    if test:
        card.metrics.update(test_metrics(model, card, test))
    if targets:
        unmeasured = sorted(set(targets) - set(card.metrics))
        if unmeasured:
            raise ValueError(f"targets without a test set to measure them: {unmeasured}")
        card.targets = dict(targets)
        card.notes = " ".join(filter(None, [card.notes, target_summary(card)]))

    unknown = sorted(set(graphs) - {"constant", "fields"})
    if unknown or not graphs:
        raise ValueError(f"graphs are 'constant' and/or 'fields', got {list(graphs)}")
    card.graphs = {k: v for k, v in (("constant", ONNX), ("fields", ONNX_FIELDS)) if k in graphs}

    def files(draft: ModelCard) -> dict[str, bytes]:
        meta = {"pdeserve.name": draft.name, "pdeserve.version": str(draft.version)}
        meta["pdeserve.card_sha256"] = draft.digest()
        out = {WEIGHTS: weights} if weights_file else {}
        for kind, filename in draft.graphs.items():
            fields = kind == "fields"
            graph = export_onnx(model, card.resolution, meta, fields=fields)
            for batch, error in check_parity(model, graph, card.resolution, fields=fields).items():
                checked[f"{kind} batch {batch}"] = error
            out[filename] = graph
        return out

    store = Registry(registry)
    published = store.publish(name, card, files)
    store.write_readme(name, render_readme(published))
    print(
        f"published {published.ref} to {registry}; parity (relative L2): "
        + ", ".join(f"{what}: {e:.1e}" for what, e in checked.items())
    )
    if published.targets:
        print("targets (mean relative L2 on the test sets):\n" + target_report(published))
    return published


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.export", description=__doc__.split("\n")[0]
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="a model directory (RUN/model)")
    p.add_argument("--name", required=True)
    p.add_argument("--registry", default=DEFAULT_REGISTRY, help="root folder or fsspec URL")
    p.add_argument("--parent", help="NAME@VERSION this model was fine-tuned from")
    p.add_argument("--test", type=Path, nargs="+", help="test datasets: metrics go in the card")
    p.add_argument("--notes", help="what a reader of the card should know (the scale reached)")
    p.add_argument(
        "--float16", action="store_true",
        help="round the spectral weights to float16 (the graphs store them so: half the size)",
    )  # fmt: skip
    p.add_argument(
        "--graphs",
        nargs="+",
        choices=["constant", "fields"],
        default=["constant", "fields"],
        help="the ONNX graphs to publish (a field specialist: fields)",
    )
    p.add_argument(
        "--no-weights", action="store_true",
        help="publish no weights file (smaller; the model cannot be fine-tuned further)",
    )  # fmt: skip
    p.add_argument(
        "--targets", nargs="+", default=[], metavar="KEY=ERROR",
        help="error targets for the card, keyed like the test metrics: poisson=1.5e-2",
    )  # fmt: skip
    args = p.parse_args(argv)
    try:
        targets = parse_targets(args.targets)
        card = export(
            args.checkpoint, args.name, args.registry, args.parent, args.test, args.notes,
            targets, args.float16, tuple(args.graphs), not args.no_weights,
        )  # fmt: skip
    except (FileNotFoundError, ValueError, RegistryError, ParityError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"ref": card.ref, "files": card.files}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
