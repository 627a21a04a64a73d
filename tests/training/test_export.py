"""Export to ONNX and publish: parity, metadata, files in the registry."""

import onnx
import pytest
import torch

from service.registry import Registry
from training.checkpoint import save_model
from training.export import ParityError, check_parity, export, export_onnx
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
    assert card.ref == "tiny@1" and set(card.files) == {"model.onnx", "weights.safetensors"}
    assert card.metrics == {"val_rel_l2/all": 0.1} and card.resolution == 32
    assert card.envelope["poisson"].eig == (1, 5) and card.lineage["n_train"] == 10
    published, files = Registry(where).read_files("tiny")
    graph = onnx.load_from_string(files["model.onnx"])
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta == {
        "pdeserve.name": "tiny",
        "pdeserve.version": "1",
        "pdeserve.card_sha256": published.digest(),
    }
    assert not {n.op_type for n in graph.graph.node} & {"DFT", "Cos", "Sin"}  # constants


@pytest.mark.parametrize("n", [32, 64])
def test_parity_at_two_resolutions(checkpoint, n):
    from training.checkpoint import load_model

    model = load_model(checkpoint).eval()
    errors = check_parity(model, export_onnx(model, n, {}), n)
    assert set(errors) == {1, 7, 64} and max(errors.values()) <= 1e-5


def test_parity_failure_is_reported(checkpoint):
    from training.checkpoint import load_model

    model = load_model(checkpoint).eval()
    graph = export_onnx(model, 32, {})
    with torch.no_grad():
        model.fno.lift.bias += 1.0  # torch and the exported graph now differ
    with pytest.raises(ParityError, match="relative L2"):
        check_parity(model, graph, 32)
