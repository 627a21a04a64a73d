"""A model card for people: the README beside a published model, written from its card.

The card (``card.json``) is the one source of truth; this renders it as markdown (intended
use from the envelope, the data from the lineage, the error per band beside its target,
the limitations and the targets missed). ``training.export`` writes it beside a model it
publishes to a local registry (``NAME/README.md``, for the newest version), and a test
checks that the bundled models' READMEs are what their cards render.
"""

from __future__ import annotations

from modelstore.bands import PREFIX
from modelstore.registry import Envelope, ModelCard

README = "README.md"
SYSTEMS = {
    "poisson": "Poisson (SYS-1), -div(K grad u) = f",
    "advection_diffusion": "advection-diffusion (SYS-2), -div(K grad u) + v . grad u = f",
    "helmholtz": "Helmholtz (SYS-3), -lap u + w u = f",
}


def _span(name: str, bounds: tuple[float, float] | None) -> str | None:
    return None if bounds is None else f"{name} {bounds[0]:.3g}..{bounds[1]:.3g}"


def _intended(system: str, env: Envelope, constants: bool) -> str:
    parts = [
        p
        for p in (
            _span("eigenvalue ratio e", env.eig),
            _span("Psi", env.psi),
            _span("w", env.omega),
        )
        if p
    ]
    lines = []
    if constants:
        lines.append(f"- {SYSTEMS.get(system, system)}, constant coefficients: {', '.join(parts)}")
    if env.field is not None:
        f = env.field
        field = [p for p in (_span("contrast", f.contrast), _span("variation of w", f.variation),
                             _span("correlation length", f.length)) if p]  # fmt: skip
        lines.append(
            f"- {SYSTEMS.get(system, system)}, coefficient fields: {', '.join(f.laws)} media, "
            + ", ".join(field + parts)
        )
    return "\n".join(lines)


def render(card: ModelCard) -> str:
    """The card as a README (markdown)."""
    graphs = set(card.graphs)
    intended = "\n".join(
        _intended(system, env, constants="constant" in graphs)
        for system, env in sorted(card.envelope.items())
    )
    bands = sorted(k for k in card.metrics if k.startswith(PREFIX) and k != f"{PREFIX}all")
    rows = []
    for key in bands:
        target = card.targets.get(key)
        error = card.metrics[key]
        verdict = "-" if target is None else ("met" if error <= target else "**missed**")
        shown = "-" if target is None else f"{target:.1e}"
        rows.append(f"| {key[len(PREFIX) :]} | {error:.3g} | {shown} | {verdict} |")
    missed = [k[len(PREFIX) :] for k, t in card.targets.items() if card.metrics.get(k, 0) > t]
    data = card.lineage.get("train") or card.lineage.get("n_train")
    n_train = sum(env.n_examples for env in card.envelope.values())
    parameters = card.model.n_parameters
    lines = [
        f"# {card.name}",
        "",
        f"Model card of `{card.ref}`, written from its `card.json` (the source of truth).",
        "",
        "## Intended use",
        "",
        "Problems inside the envelope it was trained on; the service answers others with the"
        " exact solver (`out_of_envelope`), and routes a request that names no model to the"
        " published model with the lowest measured error on its band.",
        "",
        intended,
        "",
        f"Graphs: {', '.join(sorted(graphs))} coefficients; trained at {card.resolution}x"
        f"{card.resolution} (other grids are resampled to it and back).",
        "",
        "## Model and data",
        "",
        f"- {card.model.class_}, {parameters:,} parameters, arguments "
        f"{', '.join(f'{k}={v}' for k, v in card.model.args.items() if not k.endswith('_ref'))}",
        f"- {n_train:,} training examples"
        + (f", fine-tuned from `{card.parent}`" if card.parent else "")
        + ("" if data is None else " (lineage in `card.json`)"),
        "",
        "## Error per band (mean relative L2 on held-out data)",
        "",
        "| band | error | target | |",
        "| --- | --- | --- | --- |",
        *rows,
        "",
        "## Limitations",
        "",
        f"- Targets missed: {', '.join(missed)}." if missed else "- Every target is met.",
        "- Its answers are approximations: every surrogate answer carries an error estimate,"
        " and `mode: validate` or `exact` gives the exact solver's.",
    ]
    if card.notes:
        lines += ["", "## Notes", "", card.notes]
    return "\n".join(lines) + "\n"
