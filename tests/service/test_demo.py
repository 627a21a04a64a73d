"""`pdeserve demo`: one example per system through a running service, and one it starts."""

import sys

import numpy as np
import pytest
from service_helpers import API_KEY, RESOLUTION

from datagen.solver import relative_l2
from service.client import Client, PdeserveError
from service.demo import DARCY_LABEL, SYSTEMS, answers, demo_main, examples, service_at
from service.embedded import free_port


def test_demo_examples_are_exact_solutions_of_each_system_and_of_darcy():
    items = examples(32)
    assert [e.system for e in items] == [*SYSTEMS, "poisson"]
    for e in items:
        assert e.source.shape == e.exact.shape == (32, 32)
        assert np.isfinite(e.exact).all() and np.abs(e.exact).max() > 0
    assert set(items[2].coefficients) == {"omega"} and 1 <= items[2].coefficients["omega"] <= 10
    darcy = items[3]
    assert darcy.darcy and not any(e.darcy for e in items[:3])
    a = darcy.coefficients["conductivity"]
    assert a.shape == (32, 32) and set(np.unique(a.round(9))).__len__() == 2  # two phases
    assert 5 <= a.max() / a.min() <= 10


def test_demo_against_a_running_service(service, tmp_path, capsys):
    out = tmp_path / "demo.png"
    code = demo_main(
        ["--url", service, "--api-key", API_KEY, "--resolution", str(RESOLUTION), "--out", str(out)]
    )
    text = capsys.readouterr().out
    assert code == 0, text
    for label in ("SYS-1 Poisson", "SYS-2 advection-diffusion", "SYS-3 Helmholtz", DARCY_LABEL,
                  "validate", "(auto: "):  # fmt: skip
        assert label in text
    assert "default@1" in text and f"wrote {out}" in text
    # the Darcy problem names no model: routed to the card measuring its band (two-phase
    # 1..10), whose untrained model's estimate belies the card: the exact solver answers
    assert "(fell back to the exact solver after the surrogate (banded@1): " in text
    assert "banded@1's measured error on poisson-two-phase(1,10)" in text
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_the_services_validation_agrees_with_the_local_exact_solution(service):
    with Client(service, api_key=API_KEY) as client:
        outcomes = answers(client, examples(RESOLUTION))
    for o in outcomes[:3]:
        assert o.surrogate.mode == "surrogate" and o.validate.mode == "validate"
        # The service's exact solver and datagen's are one solver: the same reference.
        exact = o.validate.exact_solution
        assert relative_l2(exact[None], o.example.exact[None])[0] < 1e-5
        assert o.validate.relative_l2 == pytest.approx(o.surrogate_error, rel=1e-4)
        assert o.surrogate_ms > 0 and o.validate.timings_ms
        assert o.surrogate.error_estimate > 0 and o.auto is None
    darcy = outcomes[3]
    # The Darcy problem: the service's Krylov solution is datagen's; the surrogate's error
    # estimate tells its error (the test registry's tiny model is far off, and says so:
    # far above what the card of banded, where it is routed, claims, so the surrogate
    # request falls back to the exact solver, and validate keeps both with a warning);
    # auto returns an answer within its tolerance, 1e-2, and why.
    assert darcy.example.darcy and darcy.surrogate.mode == "exact"
    assert "after the surrogate (banded@1)" in darcy.surrogate.reason
    assert darcy.surrogate_error < 1e-6
    v = darcy.validate
    assert relative_l2(v.exact_solution[None], darcy.example.exact[None])[0] < 1e-6
    assert v.relative_l2 / 3 < v.error_estimate < v.relative_l2 * 3
    assert v.warnings and "error estimate" in v.warnings[0]
    assert darcy.auto.mode in ("surrogate", "exact") and darcy.auto.reason.startswith("auto")
    assert relative_l2(darcy.auto.solution[None], darcy.example.exact[None])[0] < 1e-2


def test_the_demo_starts_nothing_remote():
    starting = service_at("http://192.0.2.1:9", None)
    with pytest.raises(PdeserveError, match="starts services locally only"):
        starting.__enter__()


def test_the_demo_starts_a_local_service_when_none_answers(
    service, registry_root, tmp_path, monkeypatch
):
    """The service fixture holds this machine's 2 CPUs; the demo's own service shares them."""
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HOME", str(tmp_path))  # Ray writes ~/.ray
    with service_at(url, str(registry_root)) as process:
        assert process is not None and process.poll() is None
        assert process.args[:3] == [sys.executable, "-m", "pdeserve.cli"]
        with Client(url) as client:
            assert client.health()
    assert process.returncode is not None
