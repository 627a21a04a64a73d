"""Fine-tuning: zero-shot then an lr sweep from the base model (or from scratch)."""

import json

import pytest
from ray_helpers import init_ray

from datagen.pipeline import write_split
from datagen.spec import SplitSpec
from modelstore.registry import Registry
from training.finetune import FinetuneConfig, main, run


def _config(base, shifted, tmp_path, **kw) -> FinetuneConfig:
    return FinetuneConfig(
        base="smoke",
        registry=base,
        **shifted,
        storage=str(tmp_path / "ft"),
        **({"n_examples": 8, "lrs": [1e-3, 1e-2], "epochs": 15, "use_ray": False} | kw),
    )


def test_eight_examples_lower_the_test_error_and_the_sweep_picks_the_best(base, shifted, tmp_path):
    results = run(_config(base, shifted, tmp_path, publish="smoke-tl"))
    assert results["test"]["poisson"] < results["zero_shot"]["poisson"]
    best = min(results["validation"], key=results["validation"].get)
    assert float(best) == results["chosen_lr"]
    assert results["chosen_val"] == min(results["validation"].values())
    card = Registry(base).card(results["published"])
    assert card.parent == "smoke@1" and "test_rel_l2/poisson" in card.metrics


def test_scratch_shares_the_sweep_and_has_no_zero_shot(base, shifted, tmp_path):
    results = run(_config(base, shifted, tmp_path, scratch=True, lrs=[1e-2], epochs=3))
    assert results["zero_shot"] is None and results["scratch"] is True
    assert set(results["validation"]) == {"0.01"} and results["test"]["all"] > 0


def test_scratch_from_a_preset_needs_no_base(shifted, tmp_path):
    config = FinetuneConfig(
        model="fno-64k",
        **shifted,
        storage=str(tmp_path / "ft"),
        n_examples=8,
        lrs=[1e-2],
        epochs=2,
        scratch=True,
        use_ray=False,
    )
    results = run(config)
    assert results["base"] is None and results["model"] == "fno-64k"
    assert results["zero_shot"] is None and 0 < results["test"]["poisson"] < 10


@pytest.mark.parametrize(
    "start, message",
    [
        ({}, "fine-tuning needs --base"),
        ({"scratch": True}, "--scratch needs --base"),
        ({"base": "smoke", "model": "fno-64k", "scratch": True}, "not both"),
    ],
)
def test_a_run_names_where_it_starts(start, message, shifted):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(**start, **shifted, n_examples=8)


def test_zero_examples_is_zero_shot_only(base, shifted, tmp_path):
    results = run(_config(base, shifted, tmp_path, n_examples=0))
    assert set(results) == {"base", "model", "n_examples", "scratch", "zero_shot"}
    assert 0 < results["zero_shot"]["poisson"] < 2


def test_more_examples_than_the_file_holds_is_a_clear_error(base, shifted, tmp_path, capsys):
    code = main(
        [
            "--base",
            "smoke",
            "--registry",
            base,
            "--train",
            shifted["train"],
            "--val",
            shifted["val"],
            "--test",
            shifted["test"],
            "--n-examples",
            "65",
            "--no-ray",
        ]
    )
    assert code == 2 and "holds 64 examples" in capsys.readouterr().err


def test_a_pde_the_base_never_saw(base, tmp_path):
    files = {}
    for split, n in (("train", 16), ("val", 16), ("test", 16)):
        spec = SplitSpec(system="helmholtz", n_examples=n, split=split, resolution=32, seed=4)
        files[split] = str(write_split(spec, tmp_path / f"h-{split}.h5", progress=False))
    results = run(_config(base, files, tmp_path, n_examples=8, lrs=[3e-3], epochs=2))
    assert set(results["test"]) == {"helmholtz", "all"}


@pytest.mark.slow
def test_the_sweep_on_ray_tune(base, shifted, tmp_path):
    import ray

    init_ray(log_to_driver=False)
    try:
        results = run(_config(base, shifted, tmp_path, use_ray=True, epochs=2))
    finally:
        ray.shutdown()
    assert set(results["validation"]) == {"0.001", "0.01"}
    assert results["chosen_val"] == min(results["validation"].values())
    out = tmp_path / "results.json"
    out.write_text(json.dumps(results))
    assert json.loads(out.read_text())["test"]["poisson"] > 0


def test_a_relative_l2_loss_trains_on_the_metric(base, shifted, tmp_path, capsys):
    results = run(_config(base, shifted, tmp_path, loss="relative_l2", lrs=[1e-3]))
    assert results["test"]["poisson"] < results["zero_shot"]["poisson"]
    out = capsys.readouterr().out
    losses = [
        float(line.split("train_relative_l2=")[1].split()[0])
        for line in out.splitlines()
        if "train_relative_l2=" in line
    ]
    assert len(losses) == 15 and "train_mse" not in out
    # The loss is the metric itself: a relative error, falling as the model fits.
    assert 0 < losses[-1] < losses[0] < 2


def test_a_constant_coefficient_base_fine_tunes_onto_coefficient_fields(base, tmp_path):
    """The smoke base saw constant K only; 32 Darcy examples (smooth conductivity fields)
    bring its error on held-out Darcy problems down."""
    from datagen.spec import FieldLaw

    law = FieldLaw("smooth", contrast=(1, 10))
    files = {}
    for split, n in (("train", 32), ("val", 16), ("test", 16)):
        spec = SplitSpec(
            system="poisson", n_examples=n, split=split, resolution=32, seed=5, field_law=law
        )
        files[split] = str(write_split(spec, tmp_path / f"{split}.h5", progress=False))
    results = run(_config(base, files, tmp_path, n_examples=32, lrs=[3e-3], epochs=20))
    key = "poisson-smooth(1,10)"
    assert results["test"][key] < 0.7 * results["zero_shot"][key]
