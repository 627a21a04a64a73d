"""``pdeserve demo``: one example of each system through the service, in surrogate and
validate modes, with the errors, the error estimates, the timings and a PNG to look at;
then a Darcy problem (Poisson in a two-phase medium: a conductivity field) in surrogate,
validate and ``auto`` modes.

Starts ``pdeserve serve`` in the background when nothing answers at ``--url`` (a local
address only) and stops it afterwards.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np

from datagen.coefficients import K11, K12, K22
from datagen.generate import generate_block
from datagen.ray_instance import stop_signals_raise
from datagen.solver import relative_l2
from datagen.spec import FieldLaw, SplitSpec
from service.client import DEFAULT_URL, Client, PdeserveError, SolveResult, coefficient_rows

SYSTEMS = ("poisson", "advection_diffusion", "helmholtz")
LABELS = {"poisson": "SYS-1 Poisson", "advection_diffusion": "SYS-2 advection-diffusion",
          "helmholtz": "SYS-3 Helmholtz"}  # fmt: skip
DARCY_LABEL = "Darcy (two-phase medium)"
DARCY_LAW = FieldLaw(kind="two-phase", contrast=(5.0, 10.0))  # a contrast one can see
START_TIMEOUT_S = 300.0
DEMO_SEED = 2026  # examples no model was trained on


@dataclass
class Example:
    system: str
    label: str
    source: np.ndarray
    exact: np.ndarray  # datagen's exact solution (spectral; Krylov to 1e-8 for fields)
    coefficients: dict[str, float | np.ndarray]  # public names
    shown: tuple[str, np.ndarray]  # the first panel of its row: a title and a field

    @property
    def darcy(self) -> bool:
        return "conductivity" in self.coefficients


@dataclass
class Outcome:
    example: Example
    surrogate: SolveResult
    surrogate_ms: float
    validate: SolveResult
    validate_ms: float
    auto: SolveResult | None = None  # the Darcy problem only
    auto_ms: float = 0.0

    @property
    def surrogate_error(self) -> float:
        return float(relative_l2(self.surrogate.solution[None], self.example.exact[None])[0])


def examples(resolution: int) -> list[Example]:
    """One test example per system from datagen (the pre-training ranges), then the Darcy
    problem."""
    out = []
    for system in SYSTEMS:
        spec = SplitSpec(system=system, n_examples=1, split="test", resolution=resolution,
                         seed=DEMO_SEED)  # fmt: skip
        block = generate_block(spec, 0)
        (coefficients,) = coefficient_rows(system, 1, block.coefficients, {})
        out.append(Example(system, LABELS[system], block.sources[0], block.solutions[0],
                           coefficients, ("source", block.sources[0])))  # fmt: skip
    return [*out, darcy_example(resolution)]


def darcy_example(resolution: int) -> Example:
    """Poisson with K(x) = a(x) K0: a two-phase conductivity a of contrast 5..10 (datagen's
    law), sent as the field ``conductivity`` with the constant tensor K0."""
    spec = SplitSpec(system="poisson", n_examples=1, split="test", resolution=resolution,
                     seed=DEMO_SEED, field_law=DARCY_LAW)  # fmt: skip
    block = generate_block(spec, 0)
    k0 = block.coefficients[0, [K11, K22, K12]]  # K(x) = a(x) K0, a of geometric mean 1
    a = block.coefficient_fields[0, 0].astype(np.float64) / k0[0]
    coefficients = {"k11": float(k0[0]), "k22": float(k0[1]), "k12": float(k0[2]),
                    "conductivity": a}  # fmt: skip
    contrast = f"conductivity a(x), contrast {a.max() / a.min():.1f}"
    return Example("poisson", DARCY_LABEL, block.sources[0], block.solutions[0], coefficients,
                   (contrast, a))  # fmt: skip


def answers(client: Client, items: list[Example]) -> list[Outcome]:
    """Each example in surrogate then validate mode (the Darcy problem in auto mode too); one
    untimed solve first loads the model."""
    first = items[0]
    client.solve(first.system, first.source, coefficients=first.coefficients)
    out = []
    for ex in items:
        t0 = time.perf_counter()
        surrogate = client.solve(ex.system, ex.source, coefficients=ex.coefficients)
        t1 = time.perf_counter()
        validate = client.validate(ex.system, ex.source, coefficients=ex.coefficients)
        t2 = time.perf_counter()
        outcome = Outcome(ex, surrogate, 1e3 * (t1 - t0), validate, 1e3 * (t2 - t1))
        if ex.darcy:
            outcome.auto = client.solve(
                ex.system, ex.source, coefficients=ex.coefficients, mode="auto"
            )
            outcome.auto_ms = 1e3 * (time.perf_counter() - t2)
        out.append(outcome)
    return out


def _timings(result: SolveResult) -> str:
    return ", ".join(f"{k} {v:.1f} ms" for k, v in result.timings_ms.items())


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


def _row(label: str, asked: str, result: SolveResult, error: float | None, ms: float) -> str:
    return (
        f"{label:<26} {asked:<9} {result.mode:<9} {result.model or '-':<18} {_number(error):>9} "
        f"{_number(result.error_estimate):>9} {ms:>8.1f} ms   {_timings(result)}"
    )


def report(outcomes: list[Outcome]) -> str:
    """A table: the mode asked for and the one that answered, the error against the exact
    solution and the service's estimate of it, the round trip, the solvers' times."""
    lines = [
        f"{'problem':<26} {'asked':<9} {'answered':<9} {'model':<18} {'rel. L2':>9} "
        f"{'estimate':>9} {'round trip':>11}   inside the service",
    ]
    for o in outcomes:
        s, v, label = o.surrogate, o.validate, o.example.label
        lines.append(_row(label, "surrogate", s, o.surrogate_error, o.surrogate_ms))
        lines.append(_row("", "validate", v, v.relative_l2, o.validate_ms))
        if s.routed:  # no model named: the service chose one
            lines.append(f"{'':<26} ({s.routed})")
        if s.reason:
            lines.append(f"{'':<26} ({s.reason})")
        if o.auto is not None:
            error = float(relative_l2(o.auto.solution[None], o.example.exact[None])[0])
            lines.append(_row("", "auto", o.auto, error, o.auto_ms))
            lines.append(f"{'':<26} ({o.auto.reason})")
    return "\n".join(lines)


def plot(outcomes: list[Outcome], path: Path) -> Path:
    """Rows: problems; columns: the source (the conductivity for Darcy), the surrogate's
    answer with its error estimate, the exact answer, the difference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(outcomes), 4, figsize=(14, 3.3 * len(outcomes)), squeeze=False)
    for row, o in zip(axes, outcomes, strict=True):
        exact = o.example.exact if o.validate.exact_solution is None else o.validate.exact_solution
        estimate = o.surrogate.error_estimate
        solver = "Krylov" if o.example.darcy else "spectral"
        fields = [
            o.example.shown,
            (f"{o.surrogate.mode} ({o.surrogate.model or 'exact'}), estimate {_number(estimate)}",
             o.surrogate.solution),
            (f"exact ({solver} solver)", exact),
            (f"difference, rel. L2 {o.surrogate_error:.1e}", o.surrogate.solution - exact),
        ]  # fmt: skip
        for ax, (title, field) in zip(row, fields, strict=True):
            cmap = "viridis" if field is o.example.shown[1] and o.example.darcy else "RdBu_r"
            im = ax.imshow(field, origin="lower", extent=(0, 1, 0, 1), cmap=cmap)
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046)
        row[0].set_ylabel(o.example.label, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def answering(url: str) -> bool:
    try:
        return httpx.get(f"{url.rstrip('/')}/readyz", timeout=2.0).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def service_at(url: str, registry: str | None) -> Iterator[subprocess.Popen | None]:
    """Nothing if the service answers at ``url``; otherwise ``pdeserve serve`` started there."""
    if answering(url):
        yield None
        return
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost"):
        raise PdeserveError(f"nothing answers at {url}, and the demo starts services locally only")
    command = [sys.executable, "-m", "pdeserve.cli", "serve", "--host", parsed.hostname,
               "--port", str(parsed.port or 80)]  # fmt: skip
    if registry:
        command += ["--registry", registry]
    print(f"starting the service: {' '.join(command[2:])}", flush=True)
    # Ray logs plenty to stderr: a file, not a pipe nobody drains (a full pipe blocks it).
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        try:
            _wait_until_answering(url, process, log)
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)  # serve shuts Ray down cleanly on Ctrl-C
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _wait_until_answering(url: str, process: subprocess.Popen, log) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not answering(url):
        if process.poll() is not None:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-2000:]
            raise PdeserveError(f"pdeserve serve exited with {process.returncode}: {tail}")
        if time.monotonic() > deadline:
            raise PdeserveError(f"the service did not answer within {START_TIMEOUT_S:.0f} s")
        time.sleep(1.0)


def demo_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="pdeserve demo", description=__doc__.split("\n")[0])
    p.add_argument("--url", default=DEFAULT_URL, help=f"service URL (default {DEFAULT_URL})")
    p.add_argument("--api-key", help="API key (default: $PDESERVE_API_KEY)")
    p.add_argument("--resolution", type=int, default=128, help="grid of the examples")
    p.add_argument("--out", type=Path, default=Path("demo.png"), help="the PNG to write")
    p.add_argument("--registry", help="for a service the demo starts (default: models/)")
    args = p.parse_args(argv)
    items = examples(args.resolution)
    try:
        with (
            stop_signals_raise(),
            service_at(args.url, args.registry),
            Client(args.url, api_key=args.api_key) as c,
        ):
            outcomes = answers(c, items)
    except (PdeserveError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report(outcomes))
    print(f"wrote {plot(outcomes, args.out)}")
    return 0
