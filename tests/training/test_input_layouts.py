"""The model's input layouts: the physical layout against an independent computation,
its invariances, its ONNX graphs, its card; default@2's layout still loads and answers."""

import numpy as np
import pytest
import torch

from datagen.coefficients import K11, K12, K22, reference
from datagen.generate import generate_block
from datagen.spec import FieldLaw, SplitSpec
from modelstore.registry import BUNDLED_REGISTRY, ModelCard, Registry
from modelstore.runner import OnnxSurrogate
from training.checkpoint import load_model, model_card, save_model
from training.export import export
from training.layers.normalization import physical_channels
from training.models import PDESurrogate
from training.trainer import warm_start

REFS = {"coefficient_ref": [0.01, 0.01, 0.005, 0.1, 0.1, 6.0, 1.0, 1.0, 0.3, 10.0, 10.0, 300.0],
        "unit_ref": 0.05}  # fmt: skip


def darcy(n: int = 32, count: int = 4, seed: int = 3):
    spec = SplitSpec("poisson", count, "test", n, seed, block_size=count,
                     field_law=FieldLaw(kind="two-phase", contrast=(2.0, 50.0)))  # fmt: skip
    block = generate_block(spec, 0, dtype=np.float64)
    return block.sources, block.unified(), block.solutions


def test_physical_channels_match_log_a_shape_and_unit_from_the_log_euclidean_mean():
    """Independent: datagen's reference K_ref (the log-Euclidean mean), det by hand."""
    f, c, _ = darcy()
    k_ref = reference(c)
    det = c[:, K11] * c[:, K22] - c[:, K12] ** 2
    root = np.sqrt(k_ref[:, K11] * k_ref[:, K22] - k_ref[:, K12] ** 2)
    channels, unit = (t.numpy() for t in physical_channels(torch.tensor(f), torch.tensor(c)))
    np.testing.assert_allclose(channels[:, 0], 0.5 * np.log(det / root[:, None, None] ** 2),
                               atol=1e-10)  # fmt: skip
    shape = k_ref[:, [K11, K22, K12]] / root[:, None]  # Darcy form: the shape is constant
    np.testing.assert_allclose(channels[:, 1:4], np.broadcast_to(shape[..., None, None],
                               channels[:, 1:4].shape), rtol=1e-7)  # fmt: skip
    rms = np.sqrt((f**2).mean(axis=(1, 2)))
    np.testing.assert_allclose(unit, rms / root, rtol=1e-10)
    assert np.all(channels[:, 4:] == 0)  # Poisson: no advection, no reaction


def physical_model(seed: int = 0) -> PDESurrogate:
    torch.manual_seed(seed)
    return PDESurrogate(8, 4, n_layers=2, fc_dim=16, inputs="physical", **REFS)


def test_the_physical_layout_is_blind_to_units_and_to_how_constants_are_given():
    model = physical_model()
    f = torch.randn(3, 16, 16)
    c = torch.tensor([[0.01, 0.02, 0.003, 0.1, 0.2, 5.0]] * 3)
    with torch.no_grad():
        u = model(f, c)
        torch.testing.assert_close(model(8.0 * f, 8.0 * c), u)  # a linear PDE's scaling
        as_fields = c[:, :, None, None].expand(-1, -1, 16, 16).contiguous()
        torch.testing.assert_close(model(f, as_fields), u, rtol=1e-5, atol=1e-6 * u.abs().max())
        assert torch.all(model(0 * f, c) == 0)  # a zero source answers zero
    # The second output is in the physical unit rms(f) / sqrt(det K): halving K doubles it.
    second = torch.tensor([0.0, 1.0])[None, :, None, None]
    model.fno.trunk = lambda h: second.expand(h.shape[0], 2, *h.shape[2:])
    with torch.no_grad():
        ratio = model(f, 0.5 * c) / model(f, c)
    torch.testing.assert_close(ratio, torch.full_like(ratio, 2.0))


def test_a_physical_model_publishes_with_its_layout_and_its_graphs_answer(tmp_path):
    """Export checks parity itself; then the published graphs run in ONNX Runtime against
    the torch model on fields and constants, and the card says layout 2."""
    model = physical_model()
    meta = {"data": {"resolution": 32, "envelope": {}}}
    card = export(save_model(model, tmp_path / "ckpt", meta), "phys", str(tmp_path / "reg"))
    assert card.inputs == 2 and card.model.args["inputs"] == "physical"
    f, c, _ = darcy()
    with torch.no_grad():
        f32 = torch.tensor(f, dtype=torch.float32)
        expected = model(f32, torch.tensor(c, dtype=torch.float32)).numpy()
        expected_const = model(f32, torch.tensor(reference(c), dtype=torch.float32)).numpy()
    graph = OnnxSurrogate.load("phys", str(tmp_path / "reg"), fields=True)
    got = graph.predict(f.astype(np.float32), c.astype(np.float32))
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())
    graph = OnnxSurrogate.load("phys", str(tmp_path / "reg"))
    got = graph.predict(f.astype(np.float32), reference(c).astype(np.float32))
    np.testing.assert_allclose(got, expected_const, rtol=2e-3,
                               atol=2e-3 * np.abs(expected_const).max())  # fmt: skip
    assert load_model(tmp_path / "ckpt").init_args["inputs"] == "physical"


def test_cards_refuse_an_unknown_or_inconsistent_layout():
    body = model_card(physical_model()).model_dump(by_alias=True)
    assert body["inputs"] == 2
    with pytest.raises(ValueError, match="input layout version 3 is not one this pdeserve"):
        ModelCard.model_validate({**body, "inputs": 3})
    with pytest.raises(ValueError, match="layout 'physical' is not the card's version 1"):
        ModelCard.model_validate({**body, "inputs": 1})


def test_default_2_keeps_its_values_layout_and_answers():
    """A card from before layouts were recorded reads as layout 1; its graph still runs."""
    registry = Registry(BUNDLED_REGISTRY)
    card = registry.card("default@2")
    assert card.inputs == 1 and "inputs" not in card.model.args
    f, c, _ = darcy(n=64, count=2)
    graph = OnnxSurrogate.load("default@2", str(BUNDLED_REGISTRY), fields=True)
    u = graph.predict(f.astype(np.float32), c.astype(np.float32))
    assert u.shape == f.shape and np.all(np.isfinite(u)) and np.abs(u).max() > 0


def test_a_physical_model_warm_started_from_a_values_model_computes_what_it_did():
    """Layout 1 is layout 2 with the new lifting columns and the new output at zero."""
    torch.manual_seed(1)
    values = PDESurrogate(8, 4, n_layers=2, fc_dim=16, coefficient_ref=REFS["coefficient_ref"][:6])
    physical = physical_model(seed=2)
    grown = warm_start(physical, values)
    assert grown == ["fno.lift.weight", "fno.project.fc2.weight", "fno.project.fc2.bias"]
    f, c, _ = darcy()
    f, c = torch.tensor(f, dtype=torch.float32), torch.tensor(c, dtype=torch.float32)
    with torch.no_grad():
        for coefficients in (c, torch.tensor(reference(c.double().numpy()), dtype=torch.float32)):
            torch.testing.assert_close(physical(f, coefficients), values(f, coefficients))
    small = PDESurrogate(8, 4, n_layers=1, fc_dim=16)
    with pytest.raises(ValueError, match=r"the source model has no fno\.blocks\.1"):
        warm_start(physical_model(), small)


def test_a_warm_start_keeps_the_sources_units_for_what_it_shares():
    """default@3's run computed its references from the data (7% off default@2's): a grown
    model starts exactly where its source was only in the source's units."""
    from training.trainer import warm_stats

    source = PDESurrogate(8, 4, n_layers=2, fc_dim=16, source_ref=0.3, solution_ref=2.0,
                          coefficient_ref=[0.02] * 6)  # fmt: skip
    data = {"source_ref": 0.5, "solution_ref": 1.0, "unit_ref": 0.01,
            "coefficient_ref": [0.01] * 6 + [1.0] * 6}  # fmt: skip
    stats = warm_stats(data, source.init_args)
    assert stats == {"source_ref": 0.3, "solution_ref": 2.0, "unit_ref": 0.01,
                     "coefficient_ref": [0.02] * 6 + [1.0] * 6}  # fmt: skip
    grown = PDESurrogate(8, 4, n_layers=2, fc_dim=16, inputs="physical", **stats)
    warm_start(grown, source)
    f, c, _ = darcy()
    f, c = torch.tensor(f, dtype=torch.float32), torch.tensor(c, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(grown(f, c), source(f, c))
