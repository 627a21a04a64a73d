"""datagen's exact solvers for the service (:class:`Solves`), in the ingress for short
solves and behind Serve in the exact-solver deployment (:class:`ExactSolver`) for the
rest. Constant coefficients take the FFT solve at once; field problems are batched Krylov
solves in threads a little below the surrogate's CPU priority, each stopped at its
request's deadline."""

import asyncio
import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from ray import serve

from datagen.solver import ConvergenceError, SolveTimeout, solve_detailed
from datagen.solver import solve as exact_solve
from service.batching import CallWindow
from service.costs import calibration_problem
from service.schema import DEFAULT_TOLERANCE, SolverReport
from service.settings import ServiceSettings


@dataclass
class ExactAnswer:
    """The exact solver's answer and how it got there (``message``: why it did not
    converge, where it did not)."""

    solution: np.ndarray
    method: str
    iterations: int
    relative_residual: float | None  # None for the FFT solve: exact to rounding
    converged: bool = True
    message: str | None = None
    preconditioner: str | None = None  # Krylov: "reference" or "scaled"
    solved_in: str = "exact replica"  # or "ingress"

    def report(self, started_from_surrogate: bool) -> SolverReport:
        return SolverReport(
            method=self.method,
            iterations=self.iterations,
            relative_residual=self.relative_residual,
            initial_guess="surrogate" if started_from_surrogate else "zero",
            preconditioner=self.preconditioner,
            solved_in=self.solved_in,
        )


@dataclass
class FieldProblem:
    """One field problem for the exact replica's window."""

    pde: str
    source: np.ndarray
    coefficients: np.ndarray  # (6, n, n)
    tolerance: float
    max_iterations: int
    initial_guess: np.ndarray | None
    deadline: float | None  # time.time() at which the request's budget ends

    def group(self) -> tuple:
        """Problems solved together share these."""
        n = self.source.shape[-1]
        return (self.pde, n, self.tolerance, self.max_iterations, self.initial_guess is None)


#: Grid points of the problems one batched Krylov solve takes at most. A field problem
#: needs about 100 MiB at 512^2 and 390 MiB at 1024^2 (peak, Python's allocations, CG to
#: 1e-2; 8x the coefficient fields), so a solve holds at most ~800 MiB: 8 problems at
#: 512^2, 2 at 1024^2; the rest of a window's problems go in further solves, in the
#: replica's Krylov threads (one by default) one after another.
MAX_CELLS_PER_SOLVE = 8 * 512 * 512

#: How much nicer than their replica Krylov threads run (Linux sets it per thread): a
#: little below the surrogate, not starved beside other work (bench/neighbours.py, 2
#: cores: +10 made a field solve 7.8x slower beside two CPU hogs, +2 2.3x, +0 1.9x; the
#: surrogate's p50 while Krylov threads fill both cores was 1.40x idle at +2, 1.47x at 0).
KRYLOV_NICE = 2


def _below_the_surrogate() -> None:
    """A Krylov thread runs at a lower CPU priority than the replica, so that field solves
    saturating their cores leave the surrogate's streams the CPU when those need it."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux: the default priority
        nice = min(19, os.getpriority(os.PRIO_PROCESS, 0) + KRYLOV_NICE)
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


class Solves:
    """datagen's solvers in this process. Constant coefficients: the FFT solve, at once.
    Fields: batched Krylov in at most ``concurrency`` threads a little below the process's
    CPU priority; problems that arrive while those are busy are solved together (up to
    ``batch`` per solve), and each solve stops at its requests' deadline."""

    def __init__(self, concurrency: int, batch: int):
        self._threads = ThreadPoolExecutor(concurrency, "krylov", initializer=_below_the_surrogate)
        self._window = CallWindow(self._solve_together, concurrency, batch)
        self.field_solves = 0  # field problems here now, queued or solving

    async def solve(
        self,
        pde: str,
        source: np.ndarray,
        coefficients: np.ndarray,
        tolerance: float = DEFAULT_TOLERANCE,
        max_iterations: int = 1000,
        initial_guess: np.ndarray | None = None,
        deadline: float | None = None,
    ) -> ExactAnswer:
        if coefficients.ndim == 1:  # the FFT solve: no queue, no iterations
            return await asyncio.to_thread(exact_answer, pde, source, coefficients)
        problem = FieldProblem(
            pde, source, coefficients, tolerance, max_iterations, initial_guess, deadline
        )
        self.field_solves += 1
        try:
            return await self._window(problem)
        finally:
            self.field_solves -= 1

    async def calibrate(self, grids: tuple[int, ...]) -> dict[str, dict]:
        """ms of one Krylov iteration and of a solve's fixed cost, per grid and method, for
        one field problem: auto's cost model starts from these."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, time_krylov, grids)

    async def _solve_together(self, problems: list[FieldProblem]) -> list[ExactAnswer]:
        groups: dict[tuple, list[int]] = {}
        for i, problem in enumerate(problems):
            group = groups.setdefault(problem.group(), [])
            n = problem.source.shape[-1]
            if (len(group) + 1) * n * n > MAX_CELLS_PER_SOLVE and group:
                groups[(*problem.group(), i)] = groups.pop(problem.group())  # full: set apart
                group = groups.setdefault(problem.group(), [])
            group.append(i)
        loop = asyncio.get_running_loop()
        solved = await asyncio.gather(
            *(
                loop.run_in_executor(self._threads, solve_fields, [problems[i] for i in index])
                for index in groups.values()
            )
        )
        out: list[ExactAnswer | None] = [None] * len(problems)
        for index, answers in zip(groups.values(), solved, strict=True):
            for i, answer in zip(index, answers, strict=True):
                out[i] = answer
        return out


@serve.deployment(name="ExactSolver")
class ExactSolver:
    """:class:`Solves` behind Serve: the field solves the ingress does not keep (long ones,
    and those that arrive while its own thread is busy), scaled out by Serve."""

    def __init__(self, settings: ServiceSettings):
        self._solves = Solves(settings.exact_concurrency, settings.exact_batch)

    async def solve(self, *args, **kwargs) -> ExactAnswer:
        return await self._solves.solve(*args, **kwargs)

    async def calibrate(self, grids: tuple[int, ...]) -> dict[str, dict]:
        return await self._solves.calibrate(grids)


def time_krylov(grids: tuple[int, ...]) -> dict[str, dict]:
    """Per grid, CG (Darcy) and GMRES (Helmholtz with a varying w): the time of a few and
    of more iterations of one problem; their difference gives one iteration's, the rest
    the solve's fixed cost. The best of two runs each."""
    iteration, setup = {}, {}
    few, more = 2, 8
    for n in grids:
        source, coefficients = calibration_problem(n)
        w = np.zeros_like(coefficients)
        w[:2] = 0.01
        w[5] = 4.0 * (1.0 + 0.1 * (coefficients[0] / coefficients[0].max()))
        for method, pde, c in (("cg", "poisson", coefficients), ("gmres", "helmholtz", w)):
            t = {}
            for k in (few, more, few, more):
                t0 = time.perf_counter()
                with contextlib.suppress(ConvergenceError):
                    solve_detailed(pde, source[None], c[None], tolerance=1e-14, max_iterations=k)
                ms = 1e3 * (time.perf_counter() - t0)
                t[k] = min(t.get(k, ms), ms)
            per = max((t[more] - t[few]) / (more - few), 1e-3)
            iteration[(n, method)] = per
            setup[(n, method)] = max(t[few] - few * per, 0.0)
    return {"iteration": iteration, "setup": setup}


def exact_answer(pde: str, source: np.ndarray, coefficients: np.ndarray) -> ExactAnswer:
    """A constant-coefficient problem through the FFT solve."""
    solution = exact_solve(pde, source, coefficients, mean="project")
    return ExactAnswer(solution, "fft", 0, None)


def solve_fields(problems: list[FieldProblem]) -> list[ExactAnswer]:
    """Field problems of one group in one batched solve; each answer says whether its
    problem converged, and if not why (iterations and residual, or the deadline)."""
    first = problems[0]
    guesses = [p.initial_guess for p in problems]
    deadlines = [p.deadline for p in problems if p.deadline is not None]
    try:
        out = solve_detailed(
            first.pde,
            np.stack([p.source for p in problems]),
            np.stack([p.coefficients for p in problems]),
            mean="project",
            tolerance=first.tolerance,
            max_iterations=first.max_iterations,
            initial_guess=None if guesses[0] is None else np.stack(guesses),
            deadline=max(deadlines) if len(deadlines) == len(problems) else None,
        )
        late = False
    except ConvergenceError as e:
        out, late = e.solution, isinstance(e, SolveTimeout)
    answers = []
    for i in range(len(problems)):
        method, its, res = out.method[i], int(out.iterations[i]), float(out.relative_residual[i])
        message = None
        if not out.converged[i]:
            reached = f"relative residual {res:.3g} after {its} iterations"
            message = (
                f"the time allowed ran out before the {method} solve converged ({reached})"
                if late
                else f"the {method} solver did not converge: {reached} (tolerance "
                f"{first.tolerance:g}); raise max_iterations or loosen the tolerance"
            )
        answers.append(
            ExactAnswer(
                out.solutions[i],
                method,
                its,
                res,
                bool(out.converged[i]),
                message,
                out.preconditioner[i] if out.preconditioner else None,
            )
        )
    return answers
