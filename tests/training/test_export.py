"""Export to ONNX and publish: parity, metadata, files in the registry."""

import onnx
import pytest
import torch

from modelstore.registry import Registry, RegistryError
from training.checkpoint import save_model
from training.export import (
    ParityError,
    check_parity,
    export,
    export_onnx,
    main,
    parse_targets,
    target_report,
)
from training.models import PDESurrogate


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = PDESurrogate(8, 4, n_layers=2, fc_dim=16, source_ref=0.3, solution_ref=2.0)
    data = {
        "resolution": 32,
        "n_train": 10,
        "envelope": {"poisson": {"n_examples": 10, "eig": [1, 5]}},
    }
    meta = {"data": data, "metrics": {"val_rel_l2/all": 0.1}}
    return save_model(model, tmp_path / "ckpt", meta)


@pytest.mark.parametrize("root", ["local", "memory"])
def test_export_publishes_a_checked_onnx_model(checkpoint, tmp_path, root):
    where = str(tmp_path / "registry") if root == "local" else f"memory://export-{tmp_path.name}"
    card = export(checkpoint, "tiny", where)
    assert card.ref == "tiny@1"
    assert set(card.files) == {"model.onnx", "model-fields.onnx", "weights.safetensors"}
    assert card.graphs == {"constant": "model.onnx", "fields": "model-fields.onnx"}
    assert card.metrics == {"val_rel_l2/all": 0.1} and card.resolution == 32
    assert card.envelope["poisson"].eig == (1, 5) and card.lineage["n_train"] == 10
    published, files = Registry(where).read_files("tiny")
    for name, shape in (("model.onnx", ["batch", 6]), ("model-fields.onnx", ["batch", 6, 32, 32])):
        graph = onnx.load_from_string(files[name])
        meta = {p.key: p.value for p in graph.metadata_props}
        assert meta == {
            "pdeserve.name": "tiny",
            "pdeserve.version": "1",
            "pdeserve.card_sha256": published.digest(),
        }
        assert not {n.op_type for n in graph.graph.node} & {"DFT", "Cos", "Sin"}  # constants
        (_, coefficients) = graph.graph.input
        dims = coefficients.type.tensor_type.shape.dim
        assert [d.dim_param or d.dim_value for d in dims] == shape


@pytest.mark.parametrize("fields", [False, True])
def test_the_export_says_nothing_but_real_problems(checkpoint, fields):
    """The tracer's int conversions and the unfolded Slice ops are by design: a fine-tune's
    log once held 133 lines of them."""
    import warnings

    from training.checkpoint import load_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_onnx(load_model(checkpoint), 32, {}, fields=fields)
    shown = [w for w in caught if not issubclass(w.category, DeprecationWarning)]
    assert not shown, [str(w.message)[:120] for w in shown]


def test_a_model_trained_on_the_fft_path_exports(tmp_path):
    torch.manual_seed(1)
    model = PDESurrogate(8, 4, n_layers=2, fc_dim=16, spectral="fft", solution_ref=2.0)
    meta = {"data": {"resolution": 32, "envelope": {}}}
    card = export(save_model(model, tmp_path / "ckpt", meta), "fft", str(tmp_path / "reg"))
    assert card.ref == "fft@1" and card.model.args["spectral"] == "fft"


@pytest.mark.parametrize("fields", [False, True])
@pytest.mark.parametrize("n", [32, 64])
def test_parity_at_two_resolutions(checkpoint, n, fields):
    from training.checkpoint import load_model

    model = load_model(checkpoint).eval()
    graph = export_onnx(model, n, {}, fields=fields)
    errors = check_parity(model, graph, n, fields=fields)
    assert set(errors) == {1, 7, 64} and max(errors.values()) <= 1e-5


def test_the_fields_graph_gives_the_constant_graph_on_constant_fields(checkpoint):
    """Both graphs of one export, on the same problems: constant fields = scalars."""
    import numpy as np

    from datagen.coefficients import broadcast_fields
    from modelstore.runner import OnnxSurrogate
    from training.checkpoint import load_model, read_card
    from training.export import example_inputs

    model, card = load_model(checkpoint).eval(), read_card(checkpoint)
    source, coefficients = example_inputs(5, 32)
    scalar = OnnxSurrogate(card, export_onnx(model, 32, {}))
    field = OnnxSurrogate(card, export_onnx(model, 32, {}, fields=True), fields=True)
    a = scalar.predict(source.numpy(), coefficients.numpy())
    b = field.predict(source.numpy(), broadcast_fields(coefficients.numpy(), 32))
    assert np.linalg.norm(a - b) <= 1e-6 * np.linalg.norm(a)
    with pytest.raises(ValueError, match="takes coefficients as"):
        field.predict(source.numpy(), coefficients.numpy())


def test_parity_failure_is_reported(checkpoint):
    from training.checkpoint import load_model

    model = load_model(checkpoint).eval()
    graph = export_onnx(model, 32, {})
    with torch.no_grad():
        model.fno.lift.bias += 1.0  # torch and the exported graph now differ
    with pytest.raises(ParityError, match="relative L2"):
        check_parity(model, graph, 32)


def test_parity_tolerance_is_the_float32_floor_where_that_is_larger(checkpoint, monkeypatch):
    """A graph as exact as torch's own float32 passes even under an impossible tolerance;
    one that computes something else still fails."""
    from training import export as export_module
    from training.checkpoint import load_model

    monkeypatch.setattr(export_module, "PARITY_RTOL", 1e-12)  # below float32's rounding
    model = load_model(checkpoint).eval()
    graph = export_onnx(model, 32, {})
    errors = check_parity(model, graph, 32)
    assert all(1e-12 < e <= 1e-5 for e in errors.values())
    with torch.no_grad():
        model.fno.lift.bias += 1e-3
    with pytest.raises(ParityError, match="twice torch's own float32 error"):
        check_parity(model, graph, 32)


def test_models_and_eval_commands(checkpoint, tmp_path, capsys):
    """`pdeserve models` lists and shows; `pdeserve eval` agrees with the torch model."""
    import json

    import numpy as np

    from datagen.dataset import open_dataset
    from datagen.pipeline import write_split
    from datagen.spec import SplitSpec
    from pdeserve.cli import main as cli
    from training.checkpoint import load_model

    root = str(tmp_path / "registry")
    export(checkpoint, "tiny", root)
    capsys.readouterr()
    assert cli(["models", "list", "--registry", root]) == 0
    assert capsys.readouterr().out.startswith("tiny@1")
    assert cli(["models", "show", "tiny@1", "--registry", root]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 1
    data = write_split(
        SplitSpec(system="helmholtz", n_examples=20, resolution=32),
        tmp_path / "h.h5",
        progress=False,
    )
    assert cli(["eval", "--model", "tiny", "--data", str(data), "--registry", root, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    with open_dataset(data) as r:
        chunk = r.read()
    with torch.no_grad():
        pred = load_model(checkpoint)(
            torch.from_numpy(chunk.sources), torch.from_numpy(chunk.coefficients).float()
        ).numpy()
    flat = (pred - chunk.solutions).reshape(20, -1)
    expected = np.mean(
        np.linalg.norm(flat, axis=1) / np.linalg.norm(chunk.solutions.reshape(20, -1), axis=1)
    )
    assert result["n"] == 20 and set(result["per_system"]) == {"helmholtz"}
    assert result["mean_relative_l2"] == pytest.approx(expected, rel=1e-4)
    assert cli(["eval", "--model", "nothere", "--data", str(data), "--registry", root]) == 2
    # a model folder works as --model; test files put test metrics in the card, and the
    # targets beside them
    card = export(checkpoint, "tiny", root, test=[data], targets={"test_rel_l2/helmholtz": 1e-9})
    assert card.metrics["test_rel_l2/helmholtz"] == pytest.approx(expected, rel=1e-4)
    assert card.metrics["test_rel_l2/all"] == card.metrics["test_rel_l2/helmholtz"]
    assert card.targets == {"test_rel_l2/helmholtz": 1e-9}
    assert "helmholtz" in target_report(card) and "missed (" in target_report(card)
    assert card.notes.startswith("Error targets met: 0 of 1; missed: helmholtz ")
    folder = tmp_path / "registry" / "tiny" / "2"
    capsys.readouterr()
    assert cli(["eval", "--model", str(folder), "--data", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mean_relative_l2"] == pytest.approx(
        expected, rel=1e-4
    )
    # a training checkpoint (no ONNX) says what it is and how to export it
    assert cli(["eval", "--model", str(checkpoint), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "is a training checkpoint" in err and "python -m training.export" in err


def test_the_parity_reference_runs_the_model_in_float64(checkpoint):
    import copy

    from training.checkpoint import load_model
    from training.export import example_inputs

    model = load_model(checkpoint).eval()
    source, coefficients = example_inputs(3, 32)
    with torch.no_grad():
        single = model(source, coefficients)
        double = copy.deepcopy(model).double()(source.double(), coefficients.double())
    assert single.dtype == torch.float32 and double.dtype == torch.float64
    assert torch.linalg.norm(double - single.double()) <= 1e-5 * torch.linalg.norm(double)


def test_targets_are_key_error_pairs_and_each_needs_its_test_set(checkpoint, tmp_path, capsys):
    assert parse_targets(["poisson=1.5e-2", "poisson-smooth(1,10)=2e-2"]) == {
        "test_rel_l2/poisson": 1.5e-2,
        "test_rel_l2/poisson-smooth(1,10)": 2e-2,
    }
    for bad in ("poisson", "poisson=", "=0.1", "poisson=-1", "poisson=abc"):
        with pytest.raises(ValueError, match="KEY=ERROR"):
            parse_targets([bad])
    root = str(tmp_path / "registry")
    code = main(["--checkpoint", str(checkpoint), "--name", "tiny", "--registry", root,
                 "--targets", "poisson=0.1"])  # fmt: skip
    assert code == 2 and "targets without a test set" in capsys.readouterr().err
    assert Registry(root).names() == []  # nothing published


def test_float16_export_halves_the_graphs_and_keeps_parity(tmp_path):
    """--float16: the spectral weights rounded to float16 values, stored as float16 in both
    graphs (half the bytes), parity with the rounded torch model checked as ever."""
    torch.manual_seed(0)
    model = PDESurrogate(8, 8, n_layers=2, fc_dim=16, source_ref=0.3, solution_ref=2.0)
    meta = {"data": {"resolution": 32, "envelope": {}}}
    checkpoint = save_model(model, tmp_path / "ckpt", meta)
    full = export(checkpoint, "tiny", str(tmp_path / "a"))
    half = export(checkpoint, "tiny", str(tmp_path / "b"), float16=True)
    _, files_full = Registry(str(tmp_path / "a")).read_files("tiny")
    _, files_half = Registry(str(tmp_path / "b")).read_files("tiny")
    for name in ("model.onnx", "model-fields.onnx"):
        graph = onnx.load_from_string(files_half[name])
        halves = [i for i in graph.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
        assert halves and all(i.name.endswith(".f16") for i in halves)
        assert {n.op_type for n in graph.graph.node[: len(halves)]} == {"Cast"}
        assert len(files_half[name]) < 0.7 * len(files_full[name])
    assert "float16" in half.notes and not full.notes


def test_a_specialist_ships_its_fields_graph_alone(checkpoint, tmp_path, capsys):
    where = str(tmp_path / "registry")
    args = ["--checkpoint", str(checkpoint), "--name", "spec", "--registry", where]
    assert main([*args, "--graphs", "fields", "--no-weights"]) == 0
    card, files = Registry(where).read_files("spec")
    assert card.graphs == {"fields": "model-fields.onnx"} and set(files) == {"model-fields.onnx"}
    readme = (tmp_path / "registry" / "spec" / "README.md").read_text()
    assert readme.startswith("# spec\n") and "Graphs: fields coefficients" in readme
    assert "fields batch" in capsys.readouterr().out  # checked against torch all the same
    from training.finetune import FinetuneConfig, materialize_base

    config = FinetuneConfig(base="spec", registry=where, train="t", val="v", test="t", n_examples=0)
    with pytest.raises(RegistryError, match="spec@1 was published without weights"):
        materialize_base(config, tmp_path / "base")
