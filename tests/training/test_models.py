"""Presets, the constant-channel encoding, normalisation invariance and checkpoints."""

import json

import pytest
import torch

from datagen.systems import HELMHOLTZ, POISSON
from training.checkpoint import load_model, read_card, save_model
from training.models import MODEL_PRESETS, PDESurrogate, build_model, preset
from training.models.presets import NOMINAL_PARAMETERS


def _model(**kw) -> PDESurrogate:
    torch.manual_seed(0)
    args = {"width": 8, "modes": 4, "n_layers": 2, "fc_dim": 16, **kw}
    return PDESurrogate(**args)


def _inputs(b=3, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, n, generator=g), torch.rand(b, 6, generator=g) + 0.1


@pytest.mark.parametrize("name", sorted(MODEL_PRESETS))
def test_preset_parameter_count_within_15_percent_of_its_name(name):
    with torch.device("meta"):  # no memory for fno-256m's weights
        model = PDESurrogate(**preset(name))
    count = model.n_parameters()
    assert abs(count / NOMINAL_PARAMETERS[name] - 1) <= 0.15, (name, count)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("fno-1t")


def test_constant_channels_as_bias_equal_the_seven_channel_image():
    """The paper's encoding built per pixel (7 channels) gives what the broadcast bias gives."""
    model = _model(source_ref=0.7, coefficient_ref=[0.02, 0.03, 0.01, 0.5, 0.4, 5.0])
    source, coefficients = _inputs()
    f, c, _ = model.normalize(source, coefficients)
    n = source.shape[-1]
    image = torch.cat([f[:, None], c[:, :, None, None].expand(-1, -1, n, n)], dim=1)
    expected = model.fno(image)[:, 0] * model.normalize.solution_ref
    assert torch.allclose(model(source, coefficients), expected, atol=1e-6)


@pytest.mark.parametrize("factor", [10.0, 0.01, 3.7])
def test_scaling_source_and_coefficients_together_changes_nothing(factor):
    model = _model(source_ref=0.3, coefficient_ref=[0.01, 0.01, 0.005, 0.2, 0.2, 4.0])
    source, coefficients = _inputs(seed=1)
    base = model(source, coefficients)
    scaled = model(source * factor, coefficients * factor)
    assert torch.allclose(base, scaled, rtol=1e-4, atol=1e-5 * base.abs().max().item())
    # ... while scaling only the source does change the input the network sees.
    assert not torch.allclose(base, model(source * factor, coefficients), rtol=1e-2)


def test_zero_source_gives_zero_solution():
    model = _model()
    source, coefficients = _inputs(b=2)
    source[1] = 0
    out = model(source, coefficients)
    assert torch.all(out[1] == 0) and torch.any(out[0] != 0)


def test_encoding_uses_unified_coefficients_of_every_system():
    """Helmholtz carries K = 0.01 I and w; Poisson zeros in v and w (the unified layout)."""
    assert list(HELMHOLTZ.fixed_coefficients()[:3]) == [0.01, 0.01, 0.0]
    assert POISSON.to_unified([[0.02, 0.03, 0.001]])[0, 3:].tolist() == [0, 0, 0]


def test_card_rebuilds_the_architecture():
    model = _model(spectral="fft")
    card = json.loads(json.dumps(model.card()))
    rebuilt = build_model(card)
    assert type(rebuilt) is PDESurrogate
    assert rebuilt.init_args == model.init_args
    assert rebuilt.n_parameters() == model.n_parameters() == card["n_parameters"]


def test_checkpoint_round_trip_gives_the_same_outputs(tmp_path):
    model = _model(source_ref=0.25, coefficient_ref=[0.02] * 3 + [0.1, 0.1, 3.0], solution_ref=4.0)
    path = save_model(model, tmp_path / "m", metadata={"metrics": {"val": 0.1}})
    assert sorted(p.name for p in path.iterdir()) == ["card.json", "weights.safetensors"]
    card = read_card(path)
    assert card.metrics == {"val": 0.1}
    assert card.model.args["source_ref"] == 0.25 and card.normalization.solution_ref == 4.0
    loaded = load_model(path)
    source, coefficients = _inputs(seed=2)
    with torch.no_grad():
        assert torch.equal(loaded(source, coefficients), model(source, coefficients))


def test_save_model_replaces_an_old_directory_whole(tmp_path):
    first, second = _model(), _model(width=4)
    save_model(first, tmp_path / "m")
    save_model(second, tmp_path / "m")
    assert load_model(tmp_path / "m").init_args["width"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging left behind


def test_load_model_refuses_a_foreign_card(tmp_path):
    (tmp_path / "card.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not a pdeserve model card"):
        load_model(tmp_path)


def test_unknown_model_class():
    with pytest.raises(ValueError, match="unknown model class"):
        build_model({"class": "Transformer", "args": {}})


def test_fft_and_dft_models_agree():
    model = _model()
    source, coefficients = _inputs(seed=3)
    with torch.no_grad():
        a = model(source, coefficients)
        model.set_spectral_path("fft")
        b = model(source, coefficients)
    assert torch.allclose(a, b, atol=1e-5 * a.abs().max().item(), rtol=0)


def test_exports_to_onnx_without_a_dft_op_and_runs_in_onnx_runtime(tmp_path):
    """The spectral layers reach ONNX as matrix products; ONNX Runtime agrees with torch."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = _model(source_ref=0.4, coefficient_ref=[0.01] * 3 + [0.3, 0.3, 5.0]).eval()
    source, coefficients = _inputs(b=2, n=32)
    path = tmp_path / "model.onnx"
    torch.onnx.export(
        model,
        (source, coefficients),
        str(path),
        input_names=["source", "coefficients"],
        output_names=["solution"],
        dynamic_axes={k: {0: "batch"} for k in ("source", "coefficients", "solution")},
        dynamo=False,
    )
    nodes = onnx.load(str(path)).graph.node
    ops = {node.op_type for node in nodes}
    assert "MatMul" in ops and not ops & {"DFT", "STFT"}
    # the Fourier blocks are products and two small transposes: no slicing, no shape arithmetic
    in_blocks = {node.op_type for node in nodes if node.name.startswith("/blocks.")}
    assert "MatMul" in in_blocks
    assert not in_blocks & {"Slice", "Split", "Concat", "Neg", "Shape", "Gather"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    source, coefficients = _inputs(b=3, n=32, seed=5)  # another batch size than exported
    (out,) = session.run(None, {"source": source.numpy(), "coefficients": coefficients.numpy()})
    with torch.no_grad():
        expected = model(source, coefficients).numpy()
    assert abs(out - expected).max() <= 1e-5 * abs(expected).max()


def test_graph_forms_equal_the_eager_model_in_float64():
    """What exported graphs compute (block, first block on the source alone, head) is the
    eager arithmetic in another order: equal to float64 rounding."""
    model = _model().double().eval()
    fno = model.fno
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for block in fno.blocks:  # O(1) spectral weights, so no difference hides
            block.spectral.weight_real.normal_(generator=g)
            block.spectral.weight_imag.normal_(generator=g)
        f = torch.randn(3, 16, 16, generator=g, dtype=torch.float64) + 0.5
        w = torch.randn(8, generator=g, dtype=torch.float64)
        bias = 3 * torch.randn(3, 8, generator=g, dtype=torch.float64)
        lifted = f[:, None] * w[:, None, None] + bias[:, :, None, None]
        pairs = [
            (fno.blocks[0].graph_forward(lifted), fno.blocks[0](lifted)),
            (fno.blocks[0].graph_forward_rank_one(f, w, bias), fno.blocks[0](lifted)),
            (fno.graph_trunk_rank_one(f, w, bias), fno.trunk(lifted)),
            (fno.project._exported(lifted), fno.project(lifted)),
        ]
    for got, want in pairs:
        assert got.shape == want.shape
        assert torch.allclose(got, want, rtol=0, atol=1e-12 * want.abs().max().item())


def test_load_model_refuses_changed_weights(tmp_path):
    path = save_model(_model(), tmp_path / "m")
    weights = path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError, match="does not match its checksum"):
        load_model(path)


def _field_inputs(b=3, n=16, seed=0):
    """Sources and coefficient fields: each example's scalars times smooth positive fields."""
    source, coefficients = _inputs(b, n, seed)
    g = torch.Generator().manual_seed(seed + 100)
    x = torch.arange(n) / n
    wave = torch.sin(2 * torch.pi * x)[None, :] * torch.cos(2 * torch.pi * x)[:, None]
    fields = coefficients[:, :, None, None].repeat(1, 1, n, n)
    fields *= torch.exp(0.5 * torch.rand(b, 6, 1, 1, generator=g) * wave)
    return source, fields


def test_constant_fields_give_what_their_scalars_give():
    model = _model(source_ref=0.7, coefficient_ref=[0.02, 0.03, 0.01, 0.5, 0.4, 5.0])
    source, coefficients = _inputs()
    fields = coefficients[:, :, None, None].expand(-1, -1, 16, 16)
    with torch.no_grad():
        a, b = model(source, coefficients), model(source, fields)
        assert (a - b).norm() <= 1e-6 * a.norm()
        double = model.double()
        a, b = (
            double(source.double(), coefficients.double()),
            double(source.double(), fields.double()),
        )
    assert (a - b).norm() <= 1e-12 * a.norm()


@pytest.mark.parametrize("factor", [10.0, 0.01, 3.7])
def test_scaling_source_and_coefficient_fields_together_changes_nothing(factor):
    model = _model(source_ref=0.3, coefficient_ref=[0.01, 0.01, 0.005, 0.2, 0.2, 4.0])
    source, fields = _field_inputs(seed=2)
    with torch.no_grad():
        base = model(source, fields)
        scaled = model(source * factor, fields * factor)
        assert torch.allclose(base, scaled, rtol=1e-4, atol=1e-5 * base.abs().max().item())
        # the fields matter: their constant counterparts give another answer
        mean = fields.mean(dim=(-2, -1))
        assert not torch.allclose(base, model(source, mean), rtol=1e-2)


def test_field_shapes_are_checked():
    model = _model()
    source, fields = _field_inputs()
    with pytest.raises(ValueError, match=r"\(B, 6, n, n\) on the source's grid"):
        model(source, fields[..., :8, :8])
    with pytest.raises(ValueError, match=r"coefficients \(B, 6\) or \(B, 6, n, n\)"):
        model(source, fields[:, :5])


def test_training_leaves_the_processes_subnormals_as_they_were(tmp_path):
    """The trainer flushes denormals for speed while it trains, and only then."""
    import numpy as np

    from training.config import TrainConfig
    from training.context import LocalContext
    from training.prepare import prepare_data
    from training.trainer import train

    config = TrainConfig.model_validate(
        {
            "name": "denormals",
            "model": {"width": 4, "modes": 2, "n_layers": 1, "fc_dim": 8},
            "data": {
                "train": [{"generate": {"system": "poisson", "n_examples": 8, "resolution": 16}}],
                "val": [
                    {
                        "generate": {
                            "system": "poisson",
                            "n_examples": 4,
                            "split": "val",
                            "resolution": 16,
                        }
                    }
                ],
                "cache_dir": str(tmp_path / "cache"),
            },
            "optim": {"epochs": 1, "batch_size": 4},
        }
    )
    tiny = np.finfo(np.float64).smallest_subnormal
    assert tiny * 1.0 > 0
    context = LocalContext(device=torch.device("cpu"), run_dir=tmp_path / "run")
    train(config, prepare_data(config.data, progress=False), context,
          progress=False)  # fmt: skip
    assert tiny * 1.0 > 0  # subnormals survive: numpy (and hypothesis) see IEEE arithmetic
