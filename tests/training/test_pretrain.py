"""Pre-training end to end: one plain process, and Ray Train with 2 CPU workers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from ray_helpers import init_ray

from training.checkpoint import load_model, read_card
from training.config import ConfigError, load_config
from training.data import FieldData
from training.metrics import read_log, relative_l2
from training.pretrain import _with_overrides, main, parse_args, run

SMOKE = Path(__file__).parents[2] / "training" / "configs" / "smoke.yaml"


def smoke_config(tmp_path: Path, cache: Path, **changes) -> Path:
    raw = yaml.safe_load(SMOKE.read_text())
    raw["data"]["cache_dir"] = str(cache)
    raw.update(changes)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def epochs(history):
    return [h for h in history if "epoch" in h and "event" not in h]


def test_no_ray_run_learns_imports_no_ray_and_writes_a_model(tmp_path, cache):
    config = smoke_config(tmp_path, cache)
    code = (
        "import sys; from training.pretrain import main\n"
        f"rc = main(['--config', {str(config)!r}, '--no-ray', '--storage', {str(tmp_path)!r},"
        " '--run-name', 'solo', '--quiet'])\n"
        "assert rc == 0, rc\n"
        "loaded = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
        "assert not loaded, loaded\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "solo"
    assert (run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    history = epochs(read_log(run_dir / "metrics.jsonl"))
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    errors = [h["val_rel_l2/all"] for h in history]
    assert errors[-1] < 0.75 * errors[0], errors
    # The saved model really has the error the log reports (recomputed independently here).
    model = load_model(run_dir / "model")
    card = read_card(run_dir / "model")
    best = min(errors)
    assert card.metrics["val_rel_l2/all"] == pytest.approx(best)
    val = FieldData.from_files(sorted(cache.glob("poisson-val-*.h5"))).load()
    with torch.no_grad():
        err = relative_l2(model(val.source, val.coefficients), val.solution).mean().item()
    assert err == pytest.approx(best, rel=1e-4)
    assert card.normalization.source_ref == model.init_args["source_ref"] > 0
    assert set(card.envelope) == {"poisson"} and card.resolution == 32


def test_a_killed_run_resumes_from_its_checkpoint(tmp_path, cache):
    """SIGKILL after epoch 2; the rerun picks up at epoch 3 with the same model state."""
    config = smoke_config(tmp_path, cache, fault={"rank": 0, "after_epoch": 2})
    cmd = [sys.executable, "-m", "training.pretrain", "--config", str(config), "--no-ray"]
    cmd += ["--storage", str(tmp_path), "--run-name", "crash", "--quiet"]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == -9, first.stderr[-2000:]
    assert (tmp_path / "crash" / "fault-injected").exists()
    assert not (tmp_path / "crash" / "model").exists()
    second = subprocess.run(cmd, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    history = read_log(tmp_path / "crash" / "metrics.jsonl")
    assert [h.get("event") for h in history if "event" in h] == ["resumed"]
    assert [h["epoch"] for h in epochs(history)] == [1, 2, 3, 4]
    assert load_model(tmp_path / "crash" / "model").n_parameters() > 0


def test_config_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {preset: fno-2m}\ndata: {train: [], val: []}\noptim: {}\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    text = str(e.value)
    assert "unknown model preset 'fno-2m'" in text and "epochs" in text and "train" in text
    with pytest.raises(ConfigError, match="presets:"):
        load_config("no-such-preset")
    assert main(["--config", str(bad), "--no-ray"]) == 2


def test_command_line_overrides_the_config():
    args = parse_args(
        ["--config", "darcy-small", "--epochs", "3", "--loss", "mse", "--model", "fno-64k"]
    )
    config = _with_overrides(load_config("darcy-small"), args)
    assert (config.optim.epochs, config.optim.loss, config.model.preset) == (3, "mse", "fno-64k")
    assert config.optim.lr == load_config("darcy-small").optim.lr
    with pytest.raises(SystemExit):
        parse_args(["--config", "darcy-small", "--loss", "l1"])


def test_too_many_workers_fail_before_training(tmp_path, cache, capsys):
    config = smoke_config(tmp_path, cache)
    assert main(["--config", str(config), "--num-workers", "3", "--storage", str(tmp_path)]) == 2
    assert "does not split over 3 workers" in capsys.readouterr().err


def test_data_source_needs_files_or_a_spec(tmp_path):
    raw = yaml.safe_load(SMOKE.read_text())
    raw["data"]["train"] = [{"files": ["a.h5"], "generate": raw["data"]["val"][0]["generate"]}]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="exactly one of 'files' or 'generate'"):
        load_config(path)


@pytest.mark.parametrize(
    "name",
    ["smoke", "mixed-small", "paper-sys1", "paper-sys2", "paper-mixed", "mixed-fields-small",
     "pretrained", "darcy-small", "smoke-darcy", "paper-darcy"],
)  # fmt: skip
def test_presets_validate(name):
    config = load_config(name)
    assert config.name == name


def test_the_bundled_models_cpu_and_gpu_variants_train_the_same_mix():
    """pretrained.sh's two variants differ in scale only: the same systems, laws and ranges,
    constant and field coefficients alike, and the relative-L2 loss."""

    def mix(config, split):
        return sorted(
            (s.group or s.generate.system, s.generate.model_dump_json(
                exclude={"n_examples", "split", "seed"})) for s in getattr(config.data, split)
        )  # fmt: skip

    cpu, gpu = load_config("mixed-fields-small"), load_config("pretrained")
    for split in ("train", "val"):
        assert mix(cpu, split) == mix(gpu, split)
    laws = {s.generate.field.kind for s in cpu.data.train if s.generate.field is not None}
    assert laws == {"smooth", "two-phase"} and len(cpu.data.train) == 6
    assert cpu.optim.loss == gpu.optim.loss == "relative_l2"


# ---- Ray Train -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    init_ray(log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_train_with_two_cpu_workers_lowers_the_validation_error(ray_cluster, tmp_path, cache):
    config = smoke_config(tmp_path, cache)
    args = parse_args(["--config", str(config), "--storage", str(tmp_path), "--run-name", "ddp"])
    args.quiet = True
    model_dir = run(args)
    history = epochs(read_log(tmp_path / "ddp" / "metrics.jsonl"))
    errors = [h["val_rel_l2/all"] for h in history]
    assert len(errors) == 4 and errors[-1] < 0.75 * errors[0], errors
    card = json.loads((model_dir / "card.json").read_text())
    assert card["metrics"]["val_rel_l2/all"] == pytest.approx(min(errors))


def test_ray_train_survives_a_killed_worker(ray_cluster, tmp_path, cache):
    config = smoke_config(tmp_path, cache, fault={"rank": 1, "after_epoch": 2})
    args = parse_args(["--config", str(config), "--storage", str(tmp_path), "--run-name", "ft"])
    args.quiet = True
    model_dir = run(args)
    marker = tmp_path / "ft" / "fault-injected"
    assert "killed rank 1 after epoch 2" in marker.read_text()
    history = read_log(tmp_path / "ft" / "metrics.jsonl")
    resumed = [h for h in history if h.get("event") == "resumed"]
    # Resumed from a checkpoint, not from scratch: the one of epoch 2, or of epoch 1 where
    # the kill came before Ray had registered epoch 2's upload.
    assert len(resumed) == 1 and resumed[0]["after_epoch"] in (1, 2)
    assert [h["epoch"] for h in epochs(history)] == [1, 2, 3, 4]
    assert (model_dir / "weights.safetensors").exists()


def test_publish_to_a_storage_url(tmp_path):
    """--storage URL: the model and the log land through pyarrow's filesystems (file:// here)."""
    from training.pretrain import publish_remote

    ckpt = tmp_path / "ckpt"
    (ckpt / "best").mkdir(parents=True)
    (ckpt / "best" / "card.json").write_text("{}")
    (ckpt / "best" / "weights.safetensors").write_bytes(b"w")
    (ckpt / "metrics.jsonl").write_text('{"epoch": 1}\n')
    url = publish_remote(ckpt, f"file://{tmp_path}/store", "run1")
    assert url == f"file://{tmp_path}/store/run1/model"
    out = tmp_path / "store" / "run1"
    assert sorted(p.name for p in (out / "model").iterdir()) == ["card.json", "weights.safetensors"]
    assert read_log(out / "metrics.jsonl") == [{"epoch": 1}]


def test_pdeserve_cli_runs_pretrain(capsys):
    from pdeserve.cli import main as cli

    with pytest.raises(SystemExit) as e:
        cli(["pretrain", "--help"])
    assert e.value.code == 0
    assert "--no-ray" in capsys.readouterr().out


def test_training_losses_match_their_definitions():
    import numpy as np

    from training.trainer import training_loss

    rng = np.random.default_rng(0)
    target = rng.normal(size=(3, 8, 8)) * np.array([1.0, 10.0, 100.0])[:, None, None]
    pred = target + rng.normal(size=target.shape)
    ref = 4.0
    mse = np.mean(((pred - target) / ref) ** 2)
    rel = np.mean(
        [np.sqrt(np.sum((p - t) ** 2) / np.sum(t**2)) for p, t in zip(pred, target, strict=True)]
    )
    t = {k: torch.tensor(v, dtype=torch.float32) for k, v in {"p": pred, "t": target}.items()}
    ref_t = torch.tensor(ref)
    assert float(training_loss("mse", t["p"], t["t"], ref_t)) == pytest.approx(mse, rel=1e-5)
    assert float(training_loss("relative_l2", t["p"], t["t"], ref_t)) == pytest.approx(
        rel, rel=1e-5
    )


def test_smoke_darcy_pretraining_learns_coefficient_fields(tmp_path, cache):
    """Poisson with smooth conductivity fields: the validation error falls, and the card's
    envelope records the fields the model saw."""
    raw = yaml.safe_load((SMOKE.parent / "smoke-darcy.yaml").read_text())
    raw["data"]["cache_dir"] = str(cache)
    config = tmp_path / "darcy.yaml"
    config.write_text(yaml.safe_dump(raw))
    argv = ["--config", str(config), "--no-ray", "--storage", str(tmp_path), "--run-name", "d"]
    assert main([*argv, "--quiet"]) == 0
    errors = [h["val_rel_l2/all"] for h in epochs(read_log(tmp_path / "d" / "metrics.jsonl"))]
    assert errors[-1] < 0.5 * errors[0], errors
    field = read_card(tmp_path / "d" / "model").envelope["poisson"].field
    assert field.laws == ["smooth"] and field.n_examples == 512
    assert 1 <= field.contrast[0] < field.contrast[1] <= 10 * (1 + 1e-5)


def test_init_starts_a_config_from_a_model_directory(tmp_path):
    """The recipe's second stage: --init puts the first stage's model (an absolute path, for
    Ray workers elsewhere) in model.init; a folder without a model is refused."""
    from training.checkpoint import save_model
    from training.models import PDESurrogate

    model = PDESurrogate(8, 4, n_layers=2, fc_dim=16)
    base = save_model(model, tmp_path / "base", {"data": {"resolution": 32}})
    config = load_config("mixed-fields-small")
    args = parse_args(["--config", "mixed-fields-small", "--init", str(base)])
    assert _with_overrides(config, args).model.init == str(base.resolve())
    with pytest.raises(ValueError, match="no model directory"):
        _with_overrides(config, parse_args(["--config", "smoke", "--init", str(tmp_path)]))
