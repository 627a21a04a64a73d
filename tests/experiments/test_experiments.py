"""The transfer experiments: definitions, the data-savings interpolation, a smoke run."""

import json
import math

import pytest

from experiments import runner as experiments
from experiments.__main__ import main
from experiments.analysis import savings, scratch_equivalent
from experiments.catalogue import (
    EXPERIMENTS,
    MIXED,
    SHIFTS,
    Panel,
    darcy,
    data_scaling,
    scratch,
    sys1,
    sys2,
    sys3,
    tl,
)
from experiments.scales import SCALES


def test_tasks_are_named_as_in_the_paper():
    assert sys1(5, 10).label == "SYS-1(5,10)"
    assert sys2(0.2, 1).label == "SYS-2(0.2,1)"
    assert sys3(1, 10).label == "SYS-3(1,10)"
    spec = sys2(1, 2).spec("test", 16, 32, seed=7).split_spec()
    assert spec.ranges.ratio == (1, 2) and spec.ranges.eig == (1.0, 5.0)
    assert spec.split == "test" and spec.resolution == 32


def test_field_tasks_and_unchanged_keys_of_constant_ones():
    smooth = darcy("smooth", 1, 10)
    assert smooth.label == "SYS-1 smooth(1,10)" and smooth.range_name == "contrast"
    spec = smooth.spec("train", 16, 32, seed=7).split_spec()
    assert spec.field_law.kind == "smooth" and spec.field_law.contrast == (1, 10)
    # Keys computed before tasks had fields: cached points and bases stay valid.
    assert tl((sys1(1, 5),), "fno-64k").key == "tl-fno-64k-d7587c7414"
    assert "field" not in sys1(5, 10).model_dump()
    assert tl((smooth,), "fno-64k").key != tl((sys1(1, 5),), "fno-64k").key
    operator = EXPERIMENTS["operator-shift"](SCALES["small"])
    assert [p.downstream.label for p in operator] == ["SYS-1 smooth(1,10)", "SYS-1 two-phase(1,10)"]
    assert all(p.curves[0].pretrain == MIXED for p in operator)
    assert SCALES["small"].for_experiment("operator-shift").n_examples[-1] == 2048
    fields = EXPERIMENTS["field-shift"](SCALES["small"])
    assert [p.downstream.label for p in fields] == ["SYS-1 smooth(10,100)", "SYS-1 two-phase(1,10)"]
    assert all(p.curves[0].pretrain == (smooth,) for p in fields)
    assert fields[0].curves[1] == scratch("fno-64k")


def test_smoke_field_shift_fine_tunes_a_field_base(tmp_path):
    out = tmp_path / "exp"
    assert main(["field-shift", "--out", str(out), "--scale", "smoke"]) == 0
    results = json.loads((out / "field-shift.json").read_text())
    for panel in results["panels"]:
        assert panel["range"] == "contrast"
        for curve in panel["curves"]:
            assert all(0 < p["error"] < 10 for p in curve["points"])
    (base,) = (out / "registry").iterdir()  # one smooth-field base for both panels
    card = json.loads((base / "1" / "card.json").read_text())
    assert card["envelope"]["poisson"]["field"]["laws"] == ["smooth"]


def test_scratch_equivalent_inverts_a_power_law():
    # scratch error = N^-1/2: the error TL reaches, 0.1, takes N = 100 from scratch.
    curve = [(n, n**-0.5) for n in (8, 32, 128, 512, 2048)]
    assert scratch_equivalent(curve, 0.1) == pytest.approx(100, rel=1e-9)
    assert scratch_equivalent(curve, 32**-0.5) == pytest.approx(32)
    assert scratch_equivalent(curve, 0.001) is None  # better than every scratch run
    assert scratch_equivalent(curve, 0.9) is None  # worse than the smallest


def test_scratch_equivalent_uses_the_running_minimum():
    # A scratch run that got worse with more data does not make TL's saving smaller.
    curve = [(8, 0.5), (32, 0.2), (128, 0.3), (512, 0.05)]
    n = scratch_equivalent(curve, 0.1)
    expected = math.exp(
        math.log(128)
        + (math.log(0.2) - math.log(0.1))
        / (math.log(0.2) - math.log(0.05))
        * (math.log(512) - math.log(128))
    )
    assert n == pytest.approx(expected)


def test_few_examples_get_enough_steps_and_many_get_the_epoch_floor():
    small = SCALES["small"]
    assert small.epochs_for(8) == small.max_epochs  # 1 step per epoch
    assert small.epochs_for(2048) == small.epochs
    n = 128
    assert small.epochs_for(n) * (n // small.batch_size) >= small.min_steps


def test_the_experiments_ask_the_papers_questions():
    small = SCALES["small"]
    data = EXPERIMENTS["data-scaling"](small)
    assert [p.downstream.label for p in data] == ["SYS-1(5,10)", "SYS-2(1,2)"]
    assert all({c.kind for c in p.curves} == {"tl", "scratch"} for p in data)
    ladder = EXPERIMENTS["model-scaling"](small)
    assert {c.model for p in ladder for c in p.curves} == set(small.ladder)
    shifts = EXPERIMENTS["ood-shift"](small)
    assert len(shifts) == 8
    assert [p.downstream.label for p in shifts[:4]] == [t.label for t in SHIFTS["poisson"].values()]
    mixed = EXPERIMENTS["mixed"](small)
    assert [len(p.curves) for p in mixed] == [3, 3, 3]
    assert all(len(p.curves[0].pretrain) == 3 for p in mixed)  # one base, three systems


def test_smoke_data_scaling_writes_results_and_plots_and_resumes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "exp"
    assert main(["data-scaling", "--out", str(out), "--scale", "smoke"]) == 0
    results = json.loads((out / "data-scaling.json").read_text())
    assert results["scale"]["name"] == "smoke" and results["ray"] is False
    panel = results["panels"][0]
    tl, scratch = panel["curves"]
    assert [p["n"] for p in tl["points"]] == [0, 8]
    assert [p["n"] for p in scratch["points"]] == [8, 32]  # scratch has no zero-shot
    for point in tl["points"] + scratch["points"]:
        assert 0 < point["error"] < 10
    assert tl["points"][1]["chosen_lr"] in SCALES["smoke"].lrs
    assert {s["n"] for s in panel["savings"]} == {0, 8}
    for plot in results["plots"]:
        assert (out / plot.split("/")[-1]).read_bytes()[:4] == b"\x89PNG"

    # Every point is kept: a second run trains nothing.
    def no_training(config):
        raise AssertionError("a cached point was recomputed")

    monkeypatch.setattr(experiments, "finetune", no_training)
    assert main(["data-scaling", "--out", str(out), "--scale", "smoke"]) == 0
    assert json.loads((out / "data-scaling.json").read_text())["panels"][0] == panel
    monkeypatch.undo()

    # Worker processes (--jobs) give the serial run's points: same data, bases and seeds.
    parallel = tmp_path / "parallel"
    args = ["data-scaling", "--out", str(parallel), "--scale", "smoke", "--jobs", "2"]
    assert main(args) == 0
    again = json.loads((parallel / "data-scaling.json").read_text())
    for a, b in zip(results["panels"], again["panels"], strict=True):
        for ca, cb in zip(a["curves"], b["curves"], strict=True):
            assert [p["n"] for p in ca["points"]] == [p["n"] for p in cb["points"]]
            for pa, pb in zip(ca["points"], cb["points"], strict=True):
                assert pb["error"] == pytest.approx(pa["error"], rel=1e-3)
    assert len(list((parallel / "registry").iterdir())) == 2  # each base made once


def test_jobs_do_not_mix_with_ray(tmp_path, capsys):
    assert main(["data-scaling", "--out", str(tmp_path), "--ray", "--jobs", "2"]) == 2
    assert "--jobs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data-scaling", "--out", str(tmp_path), "--jobs", "0"])


def test_widening_a_sweep_trains_only_the_added_rates(tmp_path, monkeypatch):
    smoke = SCALES["smoke"]
    narrow = smoke.model_copy(update={"lrs": [1e-3]})
    panel = data_scaling(smoke)[0]
    out = tmp_path / "exp"
    first = experiments.Runner(out, narrow, use_ray=False).run("narrow", [panel])

    swept = []

    def recording(config):
        swept.append((config.n_examples, config.lrs))
        return experiments_finetune(config)

    experiments_finetune = experiments.finetune
    monkeypatch.setattr(experiments, "finetune", recording)
    wide = experiments.Runner(out, smoke, use_ray=False).run("wide", [panel])
    assert swept and all(lrs == [1e-2] for _, lrs in swept)  # 1e-3 came from disk
    assert all(n > 0 for n, _ in swept)  # zero-shot needs no sweep
    pairs = zip(first["panels"][0]["curves"], wide["panels"][0]["curves"], strict=True)
    for narrow_curve, curve in pairs:
        for before, point in zip(narrow_curve["points"], curve["points"], strict=True):
            if point["n"] == 0:
                assert point == before
                continue
            assert set(point["validation"]) == {"0.001", "0.01"}
            best = min(point["validation"], key=point["validation"].get)
            assert float(best) == point["chosen_lr"]
            assert point["chosen_val"] == point["validation"][best]
            if best == "0.001":
                assert point["test"] == before["test"]


def test_unknown_experiment_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fig-7", "--out", str(tmp_path)])
    assert "invalid choice" in capsys.readouterr().err


def test_experiments_with_many_panels_run_fewer_points_and_share_the_rest():
    small = SCALES["small"]
    shifts = small.for_experiment("ood-shift")
    assert shifts.n_examples == [0, 8, 128] and shifts.largest_n == 512
    assert shifts.train_pool == small.largest_n == 2048  # the same downstream files
    assert small.for_experiment("data-scaling") is small
    # A point is shared where its sweep is the same, and only there.
    assert shifts.sweep_key(128) == small.sweep_key(128)
    other = small.model_copy(update={"lrs": [1e-3]})
    assert other.sweep_key(128) != small.sweep_key(128)


def test_savings_say_where_tl_beats_every_scratch_run():
    def curve(kind, points):
        return {"kind": kind, "model": "fno-64k", "label": kind,
                "points": [{"n": n, "error": e} for n, e in points]}  # fmt: skip

    panel = {
        "curves": [
            curve("tl", [(0, 0.5), (8, 0.1), (32, 0.01)]),
            curve("scratch", [(8, 0.4), (32, 0.2), (128, 0.05)]),
        ]
    }
    rows = {r["n"]: r for r in savings(panel)}
    assert rows[0]["scratch_equivalent"] is None and not rows[0]["beats_scratch"]
    assert rows[8]["scratch_equivalent"] == pytest.approx(scratch_equivalent(
        [(8, 0.4), (32, 0.2), (128, 0.05)], 0.1))  # fmt: skip
    assert rows[32]["beats_scratch"] and rows[32]["largest_scratch_n"] == 128


def test_a_failing_job_stops_a_parallel_run_with_its_error(tmp_path):
    """The worker's exception reaches the caller; the pool does not run on to the end."""
    smoke = SCALES["smoke"].model_copy(update={"train_pool": 16})  # N=32 cannot be drawn
    panel = Panel(title="scratch only", downstream=sys1(5, 10), curves=[scratch("fno-64k")])
    runner = experiments.Runner(tmp_path / "exp", smoke, use_ray=False, jobs=2)
    with pytest.raises(ValueError, match="--n-examples 32"):
        runner.run("failing", [panel])
