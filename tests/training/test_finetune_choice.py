"""What fine-tuning hands over: the lowest validation error over every trial's best epoch
and the base's zero-shot one ("epoch 0"); nothing worse than the base is published unless
asked; the log has one line per epoch per trial and a summary of the sweep."""

import re

import pytest
import torch
from ray_helpers import init_ray
from safetensors.torch import load_file

import training.trainer
from modelstore.registry import Registry, RegistryError
from training.finetune import TRIAL_RESOURCES, FinetuneConfig, main, run, trials_at_once

#: A learning rate that wrecks the smoke base in one epoch: the base stays the best.
WRECKING = 1.0


def _config(base, shifted, tmp_path, **kw) -> FinetuneConfig:
    return FinetuneConfig(
        base="smoke",
        registry=base,
        **shifted,
        storage=str(tmp_path / "ft"),
        publish_registry=str(tmp_path / "registry"),
        **({"n_examples": 8, "lrs": [WRECKING], "epochs": 1, "use_ray": False} | kw),
    )


def _epoch_lines(out: str) -> list[str]:
    return re.findall(r"^.*\btl-n8-lr\S+ epoch \d+/\d+: .*$", out, flags=re.M)


def test_when_no_epoch_beats_the_base_nothing_is_published(base, shifted, tmp_path, capsys):
    results = run(_config(base, shifted, tmp_path, publish="smoke-tl"))
    out = capsys.readouterr().out
    base_only = {"model": "base", "lr": None, "epoch": 0, "val": results["zero_shot_val"]}
    assert results["chosen"] == base_only
    assert results["trials"][0]["best_val"] > results["zero_shot_val"]
    assert results["test"] == results["zero_shot"] and results["published"] is None
    assert "chosen: the base (zero-shot validation error" in out
    assert "nothing published: no fine-tuned model beat the base" in out
    with pytest.raises(RegistryError):
        Registry(tmp_path / "registry").card("smoke-tl")


def test_publish_anyway_publishes_the_best_fine_tuned_model_and_says_it_is_worse(
    base, shifted, tmp_path, capsys
):
    config = _config(base, shifted, tmp_path, publish="smoke-tl", publish_anyway=True)
    results = run(config)
    assert results["chosen"]["model"] == "base" and results["published"] == "smoke-tl@1"
    assert "smoke-tl@1 is worse than its base smoke@1" in capsys.readouterr().out
    card = Registry(tmp_path / "registry").card("smoke-tl")
    assert card.parent == "smoke@1" and "Worse than its base" in card.notes
    finetune = card.lineage["finetune"]
    assert finetune["beats_base"] is False and finetune["lr"] == WRECKING
    assert finetune["epoch"] == 1 and finetune["zero_shot_val"] == results["zero_shot_val"]
    assert card.metrics["zero_shot/val_rel_l2/all"] == results["zero_shot_val"]
    assert card.metrics["val_rel_l2/all"] == results["trials"][0]["best_val"]
    assert card.metrics["zero_shot/test_rel_l2/poisson"] == results["zero_shot"]["poisson"]


def test_publish_anyway_needs_publish(base, shifted, tmp_path):
    with pytest.raises(ValueError, match="--publish-anyway goes with --publish"):
        _config(base, shifted, tmp_path, publish_anyway=True)


class ScriptedValidation:
    """``training.trainer.evaluate`` answering the given errors in turn (the first: the
    base's, epoch 0), keeping a copy of the weights it was shown each time."""

    def __init__(self, errors: list[float]):
        self.errors = list(errors)
        self.weights: list[dict[str, torch.Tensor]] = []

    def __call__(self, model, loader, groups, autocast) -> dict[str, float]:
        self.weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        error = self.errors.pop(0)
        return {"val_rel_l2/poisson": error, "val_rel_l2/all": error}


def test_a_trial_keeps_its_best_epoch_not_its_last(base, shifted, tmp_path, monkeypatch, capsys):
    scripted = ScriptedValidation([0.5, 0.4, 0.2, 0.3])  # base, then epochs 1, 2, 3
    monkeypatch.setattr(training.trainer, "evaluate", scripted)
    config = _config(base, shifted, tmp_path, lrs=[1e-3], epochs=3, publish="smoke-tl")
    results = run(config)
    assert results["zero_shot_val"] == 0.5
    (trial,) = results["trials"]
    assert trial | {"seconds": 0} == {
        "lr": 1e-3,
        "best_epoch": 2,
        "best_val": 0.2,
        "epochs": 3,
        "seconds": 0,
    }
    assert results["chosen"] == {"model": "fine-tuned", "lr": 1e-3, "epoch": 2, "val": 0.2}
    chosen = load_file(f"{results['model_dir']}/weights.safetensors")
    epoch2 = scripted.weights[2]
    assert all(torch.equal(chosen[k], epoch2[k]) for k in epoch2)
    assert not all(torch.equal(chosen[k], scripted.weights[3][k]) for k in epoch2)
    card = Registry(tmp_path / "registry").card("smoke-tl")
    assert card.lineage["finetune"]["epoch"] == 2 and card.lineage["finetune"]["beats_base"]
    assert card.metrics["val_rel_l2/all"] == 0.2 and card.metrics["zero_shot/val_rel_l2/all"] == 0.5
    out = capsys.readouterr().out
    assert "chosen: lr 0.001, epoch 2: validation error 0.2000" in out


def test_the_log_has_one_line_per_epoch_per_trial_and_a_summary(base, shifted, tmp_path, capsys):
    lrs = [1e-3, 3e-3]
    run(_config(base, shifted, tmp_path, lrs=lrs, epochs=2))
    out = capsys.readouterr().out
    lines = _epoch_lines(out)
    assert sorted(re.sub(r":.*", "", line) for line in lines) == [
        f"tl-n8-lr{lr:g} epoch {e}/2" for lr in lrs for e in (1, 2)
    ]
    summary = out[out.index("smoke: val_rel_l2/all per trial") :].splitlines()
    assert summary[1].split() == ["trial", "lr", "best", "epoch", "best", "val", "time"]
    assert summary[2].split()[:3] == ["base", "-", "0"]
    assert [row.split()[:2] for row in summary[3:5]] == [["1", "0.001"], ["2", "0.003"]]
    assert summary[5].startswith("chosen: ")


def test_the_flag_on_the_command_line(base, shifted, tmp_path, capsys):
    args = ["--base", "smoke", "--registry", base, "--n-examples", "8", "--no-ray"]
    args += [f"--{split}={path}" for split, path in shifted.items()]
    args += ["--lrs", f"{WRECKING}", "--epochs", "1", "--storage", str(tmp_path / "ft")]
    args += ["--publish", "smoke-tl", "--publish-registry", str(tmp_path / "registry")]
    assert main([*args, "--publish-anyway"]) == 0
    card = Registry(tmp_path / "registry").card("smoke-tl")
    assert card.lineage["finetune"]["beats_base"] is False


@pytest.mark.slow
def test_on_ray_tune_the_base_competes_and_trials_report_their_best_epoch(
    base, shifted, tmp_path, capfd
):
    import ray

    init_ray()
    try:
        config = _config(base, shifted, tmp_path, use_ray=True, lrs=[WRECKING, 1e-3], epochs=2)
        results = run(config)
    finally:
        ray.shutdown()
    out, err = capfd.readouterr()
    tuned, wrecked = results["trials"]  # in the order of their learning rates
    assert wrecked["lr"] == WRECKING and wrecked["epochs"] == 2 and wrecked["seconds"] > 0
    assert 1 <= tuned["best_epoch"] <= 2 and tuned["best_val"] == results["validation"]["0.001"]
    best = min([results["zero_shot_val"], wrecked["best_val"], tuned["best_val"]])
    assert results["chosen"]["val"] == best
    log = out + err
    assert len(_epoch_lines(log)) == 4, log[-4000:]  # each once, not twice
    assert "Traceback" not in log and "Checkpoint successfully created" not in log


@pytest.mark.parametrize(
    "resources, workers, gpu, at_once",
    [
        ({"CPU": 2.0, "memory": 1e9}, 1, False, 2),  # the README's 2-CPU head: two trials
        ({"CPU": 2.0}, 4, False, 1),
        ({"CPU": 16.0, "GPU": 1.0}, 1, True, 1),
        ({"CPU": 16.0}, 1, True, 1),  # no GPU: one, which waits (or says so)
    ],
)
def test_trials_at_once_fit_their_workers(resources, workers, gpu, at_once):
    assert trials_at_once(resources, workers, gpu) == at_once


def test_a_trial_reserves_no_cpu():
    """A CPU share per trial left the second trial's worker waiting on 2 CPUs (2 x 1.01 > 2)
    until Ray Train timed it out with a traceback."""
    assert not {"cpu", "CPU", "gpu", "GPU"} & set(TRIAL_RESOURCES)


def test_a_joined_clusters_workers_know_its_address(monkeypatch):
    from datagen import ray_instance

    monkeypatch.delenv(ray_instance.JOB_MARKER, raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    mine = {"env_vars": {"X": "1"}, "pip": ["a"]}
    joined = ray_instance.joined_runtime_env("h:6379", mine)
    assert joined == {"env_vars": {"RAY_ADDRESS": "h:6379", "X": "1"}, "pip": ["a"]}
    assert ray_instance.joined_runtime_env("auto", None) == {
        "env_vars": {"RAY_ADDRESS": "10.0.0.1:6379"}
    }
    assert ray_instance.joined_runtime_env("ray://h:10001", None) is None
    job = '{"runtime_env": {"env_vars": {"RAY_ADDRESS": "elsewhere:1"}}}'
    monkeypatch.setenv(ray_instance.JOB_MARKER, job)  # ray.init would refuse a second one
    assert ray_instance.joined_runtime_env(None, None) is None


def test_a_finished_trial_ends_without_a_traceback(monkeypatch, capsys):
    """Ray's SIGTERM handler raises SystemExit wherever the trial's process is; inside a
    weakref callback Python printed it as 'Exception ignored ... Traceback'."""
    import gc
    import sys
    import weakref

    from training.finetune import quiet_trial_exit

    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    quiet_trial_exit()

    class Thing:
        pass

    def raising(exc):
        def callback(_):
            raise exc

        return callback

    keep = []
    for exc in (SystemExit(1), ValueError("still reported")):
        thing = Thing()
        keep.append(weakref.ref(thing, raising(exc)))
        del thing
        gc.collect()
    err = capsys.readouterr().err
    assert "SystemExit" not in err and "still reported" in err
