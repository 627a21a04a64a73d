"""``pdeserve demo``: one example of each system through the service, in surrogate and
validate modes, with the errors, the timings and a PNG to look at.

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

from datagen.generate import generate_block
from datagen.solver import relative_l2
from datagen.spec import SplitSpec
from service.client import DEFAULT_URL, Client, PdeserveError, SolveResult, coefficient_rows

SYSTEMS = ("poisson", "advection_diffusion", "helmholtz")
LABELS = {"poisson": "SYS-1 Poisson", "advection_diffusion": "SYS-2 advection-diffusion",
          "helmholtz": "SYS-3 Helmholtz"}  # fmt: skip
START_TIMEOUT_S = 300.0
DEMO_SEED = 2026  # examples no model was trained on


@dataclass
class Example:
    system: str
    source: np.ndarray
    exact: np.ndarray  # datagen's exact spectral solution
    coefficients: dict[str, float]  # public names


@dataclass
class Outcome:
    example: Example
    surrogate: SolveResult
    surrogate_ms: float
    validate: SolveResult
    validate_ms: float

    @property
    def surrogate_error(self) -> float:
        return float(relative_l2(self.surrogate.solution[None], self.example.exact[None])[0])


def examples(resolution: int) -> list[Example]:
    """One test example per system from datagen (the pre-training ranges)."""
    out = []
    for system in SYSTEMS:
        spec = SplitSpec(system=system, n_examples=1, split="test", resolution=resolution,
                         seed=DEMO_SEED)  # fmt: skip
        block = generate_block(spec, 0)
        (coefficients,) = coefficient_rows(system, 1, block.coefficients, {})
        out.append(Example(system, block.sources[0], block.solutions[0], coefficients))
    return out


def answers(client: Client, items: list[Example]) -> list[Outcome]:
    """Each example in surrogate then validate mode; one untimed solve first loads the model."""
    first = items[0]
    client.solve(first.system, first.source, coefficients=first.coefficients)
    out = []
    for ex in items:
        t0 = time.perf_counter()
        surrogate = client.solve(ex.system, ex.source, coefficients=ex.coefficients)
        t1 = time.perf_counter()
        validate = client.validate(ex.system, ex.source, coefficients=ex.coefficients)
        t2 = time.perf_counter()
        out.append(Outcome(ex, surrogate, 1e3 * (t1 - t0), validate, 1e3 * (t2 - t1)))
    return out


def _timings(result: SolveResult) -> str:
    return ", ".join(f"{k} {v:.1f} ms" for k, v in result.timings_ms.items())


def report(outcomes: list[Outcome]) -> str:
    """A table: the error against the exact solution, the round trip, the solvers' times."""
    lines = [
        f"{'system':<26} {'mode':<9} {'model':<10} {'rel. L2 vs exact':>16} {'round trip':>11}"
        "   inside the service",
    ]
    for o in outcomes:
        s, v = o.surrogate, o.validate
        lines.append(
            f"{LABELS[o.example.system]:<26} {'surrogate':<9} {s.model or s.mode:<10} "
            f"{o.surrogate_error:>16.2e} {o.surrogate_ms:>8.1f} ms   {_timings(s)}"
        )
        lines.append(
            f"{'':<26} {'validate':<9} {v.model or v.mode:<10} {v.relative_l2:>16.2e} "
            f"{o.validate_ms:>8.1f} ms   {_timings(v)}"
        )
        if s.reason:
            lines.append(f"{'':<26} ({s.reason})")
    return "\n".join(lines)


def plot(outcomes: list[Outcome], path: Path) -> Path:
    """Rows: systems; columns: source, surrogate, exact, difference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(outcomes), 4, figsize=(14, 3.3 * len(outcomes)), squeeze=False)
    for row, o in zip(axes, outcomes, strict=True):
        exact = o.validate.exact_solution
        fields = [
            ("source", o.example.source),
            (f"surrogate ({o.surrogate.model})", o.surrogate.solution),
            ("exact (spectral solver)", exact),
            (f"difference, rel. L2 {o.validate.relative_l2:.1e}", o.surrogate.solution - exact),
        ]
        for ax, (title, field) in zip(row, fields, strict=True):
            im = ax.imshow(field, origin="lower", extent=(0, 1, 0, 1), cmap="RdBu_r")
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046)
        row[0].set_ylabel(LABELS[o.example.system], fontsize=10)
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
        with service_at(args.url, args.registry), Client(args.url, api_key=args.api_key) as c:
            outcomes = answers(c, items)
    except (PdeserveError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report(outcomes))
    print(f"wrote {plot(outcomes, args.out)}")
    return 0
