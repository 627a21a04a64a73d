"""`pdeserve serve`'s banner suggests a request the served model answers itself."""

from modelstore.registry import DEFAULT_REGISTRY, Registry
from service import cli


def test_the_foundation_model_gets_an_example_it_answers():
    line = cli.try_line("http://h:1", DEFAULT_REGISTRY, "default")
    assert line.endswith("-d @examples/helmholtz.json")


def test_a_narrow_model_gets_an_example_inside_its_envelope(monkeypatch):
    """A model fine-tuned on SYS-1 Poisson alone (as the README's sys1-med): the Helmholtz
    example would fall back to the exact solver, so the banner names the Poisson one."""
    card = Registry(DEFAULT_REGISTRY).card("default")
    narrow = card.model_copy(update={"envelope": {"poisson": card.envelope["poisson"]}})
    monkeypatch.setattr(Registry, "card", lambda self, ref: narrow)
    assert cli.try_line("http://h:1", DEFAULT_REGISTRY, "x").endswith("@examples/poisson.json")


def test_a_model_that_answers_no_example_says_so():
    line = cli.try_line("http://h:1", DEFAULT_REGISTRY, "darcy-smooth")
    assert "answered exactly: darcy-smooth@1 has no graph for constant coefficients" in line
