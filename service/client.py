"""Python client of the pdeserve service: numpy arrays in, numpy arrays out.

    from service.client import Client
    with Client("http://127.0.0.1:8000") as client:
        result = client.solve("helmholtz", source, omega=4)          # result.solution (n, n)
        batch = client.solve_batch("poisson", sources, coefficients)  # (N, n, n), in order
        darcy = client.solve("poisson", source, eigenvalue=2, angle=0, conductivity=a,
                             mode="auto")                             # a: (n, n) field

Needs numpy, httpx and pybase64 only (tqdm for progress bars, if installed): no Ray, torch or
pydantic. Arrays travel as raw float32 bytes by default (``encoding="binary"``: the KServe
v2 inference protocol with binary tensors, :mod:`service.v2`); ``encoding="json"`` sends
``POST /solve`` bodies with base64 arrays, as curl users do. Connection errors and 429,
502, 503 and 504 answers are retried with exponential backoff and jitter (a solve is
idempotent); any other 4xx raises :class:`RequestError` carrying the server's message.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from datagen.systems import COEFFICIENT_NAMES
from service import v2
from service.wire import PUBLIC_COEFFICIENTS, decode_array, encode_array

RETRY_STATUS = frozenset({429, 502, 503, 504})
MAX_BATCH_ITEMS = 256  # the service's default max_batch_items
UNIFIED = COEFFICIENT_NAMES  # datagen.systems imports numpy only
DTYPES_V2 = {"float32": np.float32, "float64": np.float64}
DEFAULT_URL = os.environ.get("PDESERVE_URL", "http://127.0.0.1:8000")


class PdeserveError(Exception):
    """Base of the client's errors."""


class RequestError(PdeserveError):
    """The server refused the request (4xx): ``status``, ``message``, ``detail``."""

    def __init__(self, status: int, detail: Any):
        self.status = status
        self.detail = detail
        self.message = _message(detail)
        super().__init__(f"HTTP {status}: {self.message}")


class ServiceUnavailable(PdeserveError):
    """No answer after every retry (connection errors, 429, 5xx)."""


def _message(detail: Any) -> str:
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg', '')}"
            if isinstance(d, dict)
            else str(d)
            for d in detail
        )
    return str(detail)


@dataclass
class SolveResult:
    """One answer: the solution and what the service says about it."""

    solution: np.ndarray
    mode: str
    model: str | None = None
    routed: str | None = None  # no model named: which one the service chose, and why
    reason: str | None = None
    relative_l2: float | None = None
    exact_solution: np.ndarray | None = None
    error_estimate: float | None = None  # surrogate answers: the estimated relative L2 error
    solver: dict[str, Any] | None = None  # exact and refine: method, iterations, residual
    warnings: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SolveResult:
        validation = data.get("validation") or {}
        exact = validation.get("exact_solution")
        return cls(
            solution=_field(data["solution"]),
            mode=data["mode"],
            model=data.get("model"),
            routed=data.get("routed"),
            reason=data.get("reason"),
            relative_l2=validation.get("relative_l2"),
            exact_solution=None if exact is None else _field(exact),
            error_estimate=data.get("error_estimate"),
            solver=data.get("solver"),
            warnings=list(data.get("warnings", [])),
            timings_ms=dict(data.get("timings_ms", {})),
        )


@dataclass
class BatchResult:
    """``solve_batch``'s answer, in the order of the inputs."""

    solutions: np.ndarray  # (N, n, n)
    modes: list[str]
    relative_l2: np.ndarray | None = None  # (N,) in validate mode
    exact_solutions: np.ndarray | None = None  # (N, n, n) in validate mode
    results: list[SolveResult] = field(default_factory=list)

    @property
    def error_estimates(self) -> np.ndarray:
        """(N,): each surrogate answer's estimated relative L2 error (NaN for exact ones)."""
        return np.array(
            [np.nan if r.error_estimate is None else r.error_estimate for r in self.results]
        )


def _field(value: Any) -> np.ndarray:
    if isinstance(value, dict):
        # float32 answers stay float32: a 4,096-example batch at 128^2 is 256 MB, not 512
        return decode_array(value["dtype"], value["shape"], value["data"], widen=False)
    return np.asarray(value, dtype=np.float64)


#: One example's coefficients by public name: numbers, or (n, n) fields.
CoefficientRow = dict[str, "float | np.ndarray"]


def _column(value: Any, count: int, name: str) -> list[float | np.ndarray]:
    """One named coefficient for ``count`` examples: a number or (count,) numbers, an (n, n)
    field for all of them, or (count, n, n) fields."""
    a = np.asarray(value, dtype=np.float64)
    if a.ndim == 0:
        return [float(a)] * count
    if a.ndim == 1 and a.shape[0] == count:
        return [float(v) for v in a]
    if a.ndim == 2 and a.shape[0] == a.shape[1]:
        return [a] * count
    if a.ndim == 3 and a.shape[0] == count and a.shape[1] == a.shape[2]:
        return list(a)
    raise ValueError(
        f"coefficient {name}: give a number, {count} numbers, an (n, n) field or {count} "
        f"(n, n) fields, got shape {a.shape}"
    )


def _compact(value: np.ndarray) -> float | np.ndarray:
    """A field that does not vary travels as its number."""
    return float(value.flat[0]) if value.min() == value.max() else value


def coefficient_rows(
    pde: str, count: int, coefficients: np.ndarray | Mapping[str, Any] | None, named: Mapping
) -> list[CoefficientRow]:
    """Per-example public coefficients from named values or a unified array: (6,) or (N, 6)
    numbers, (6, n, n) or (N, 6, n, n) fields. Names take numbers or fields
    (:func:`_column`); a unified field that does not vary is sent as its number."""
    if pde not in PUBLIC_COEFFICIENTS:
        raise ValueError(f"unknown pde {pde!r}; choose one of {', '.join(PUBLIC_COEFFICIENTS)}")
    if coefficients is not None and named:
        raise ValueError("give coefficients either as an array/mapping or as keywords, not both")
    if coefficients is None:
        coefficients = dict(named)
    if isinstance(coefficients, Mapping):
        columns = {k: _column(v, count, k) for k, v in coefficients.items()}
        return [{k: v[i] for k, v in columns.items()} for i in range(count)]
    c = np.asarray(coefficients, dtype=np.float64)
    if c.ndim in (1, 3):
        c = np.broadcast_to(c, (count, *c.shape))
    if c.ndim not in (2, 4) or c.shape[:2] != (count, len(UNIFIED)):
        raise ValueError(
            f"coefficients must be (N, 6) numbers or (N, 6, n, n) fields in the unified order "
            f"{list(UNIFIED)} with N = {count}, got {c.shape}"
        )
    fields = PUBLIC_COEFFICIENTS[pde]
    index = [UNIFIED.index(unified) for unified in fields.values()]
    if c.ndim == 2:
        return [dict(zip(fields, map(float, row[index]), strict=True)) for row in c]
    return [dict(zip(fields, (_compact(row[j]) for j in index), strict=True)) for row in c]


class _Base:
    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 6,
        backoff: float = 0.2,
        max_backoff: float = 10.0,
        dtype: str = "float32",
        encoding: str = "binary",
    ):
        if encoding not in ("binary", "json"):
            raise ValueError(f"encoding must be 'binary' or 'json', got {encoding!r}")
        self.url = url.rstrip("/")
        self.encoding = encoding
        key = api_key if api_key is not None else os.environ.get("PDESERVE_API_KEY")
        self.headers = {"X-API-Key": key} if key else {}
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.dtype = dtype

    def _give_up(self, method: str, path: str, last: str) -> ServiceUnavailable:
        return ServiceUnavailable(
            f"{method} {path}: no answer after {self.retries + 1} tries ({last})"
        )

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Exponential backoff with full jitter; a Retry-After header is a floor."""
        delay = random.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))
        if response is not None and response.headers.get("retry-after", "").isdigit():
            delay = max(delay, float(response.headers["retry-after"]))
        return delay

    def _item(
        self,
        pde: str,
        source: np.ndarray,
        coefficients: CoefficientRow,
        mode: str,
        model: str | None,
        options: Mapping[str, Any],
    ) -> dict:
        body = {
            "pde": pde,
            "source": encode_array(np.asarray(source), self.dtype),
            "coefficients": {
                k: encode_array(v, self.dtype) if isinstance(v, np.ndarray) else v
                for k, v in coefficients.items()
            },
            "mode": mode,
            **{k: v for k, v in options.items() if v is not None},
        }
        if model is not None:
            body["model"] = model
        return body

    def _solve_body(self, pde, source, mode, model, coefficients, options, named) -> dict:
        (row,) = coefficient_rows(pde, 1, coefficients, named)
        return self._item(pde, source, row, mode, model, options)

    def _batch_bodies(
        self,
        pde,
        sources,
        coefficients,
        named,
        mode,
        model,
        options,
        batch_size,
    ) -> tuple[np.ndarray, Callable[[slice], dict]]:
        """Checked sources and a function: slice -> the /solve/batch body of those items."""
        if not 1 <= batch_size <= MAX_BATCH_ITEMS:
            raise ValueError(
                f"batch_size must be 1..{MAX_BATCH_ITEMS} (the service's default limit)"
            )
        sources = np.asarray(sources)
        if sources.ndim != 3:
            raise ValueError(f"sources must be (N, n, n), got {sources.shape}")
        rows = coefficient_rows(pde, len(sources), coefficients, named)

        def body(part: slice) -> dict:
            items = [
                self._item(pde, sources[i], rows[i], mode, model, options)
                for i in range(part.start, part.stop)
            ]
            return {"items": items}

        return sources, body

    @staticmethod
    def _v2_path(model: str | None) -> str:
        if model is None:
            return "/v2/infer"
        name, _, version = model.partition("@")
        return f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"

    def _v2_body(
        self,
        pde: str,
        sources: np.ndarray,
        rows: list[CoefficientRow],
        mode: str,
        options: Mapping[str, Any],
        single: bool,
    ) -> tuple[bytes, dict[str, str]]:
        """A v2 inference request: ``sources`` (B, n, n) (sent as [n, n] where ``single``),
        each coefficient [B] numbers or [B, n, n] fields, the rest as parameters."""
        dtype = DTYPES_V2[self.dtype]
        tensors: dict[str, Any] = {"source": sources[0] if single else sources}
        n = sources.shape[-1]
        for name in rows[0]:
            column = [row[name] for row in rows]
            if all(not isinstance(v, np.ndarray) for v in column):
                tensors[name] = np.array(column, dtype=np.float64)
            else:
                fields = np.stack([np.broadcast_to(np.asarray(v, dtype), (n, n)) for v in column])
                tensors[name] = fields[0] if single else fields
        tensors = {k: v.astype(dtype) if v.ndim >= 2 else v for k, v in tensors.items()}
        params = {"pde": pde, "mode": mode, **{k: v for k, v in options.items() if v is not None}}
        body, length = v2.encode({"parameters": params}, "inputs", tensors, binary=True)
        return body, {"Content-Type": v2.CONTENT_TYPE, v2.HEADER_LENGTH: str(length)}

    @staticmethod
    def _v2_results(response: httpx.Response) -> list[SolveResult]:
        """The answers of a v2 inference response, in order."""
        try:
            _, out = v2.decode(response.content, response.headers.get(v2.HEADER_LENGTH), "outputs")
        except v2.WireError as e:
            raise PdeserveError(f"a malformed answer from the service: {e}") from None
        solutions = out["solution"]
        single = solutions.ndim == 2
        solutions = solutions[None] if single else solutions
        exact = out.get("exact_solution")
        if exact is not None and single:
            exact = exact[None]

        def number(name: str, i: int) -> float | None:
            values = out.get(name)
            return None if values is None or np.isnan(values[i]) else float(values[i])

        return [
            SolveResult(
                solution=solutions[i],
                mode=out["mode"][i],
                model=out["model"][i] or None,
                routed=out["routed"][i] or None if "routed" in out else None,
                reason=out["reason"][i] or None,
                relative_l2=number("relative_l2", i),
                exact_solution=None if exact is None else exact[i],
                error_estimate=number("error_estimate", i),
                solver=json.loads(out["solver"][i]) if out["solver"][i] else None,
                warnings=json.loads(out["warnings"][i]),
                timings_ms=json.loads(out["timings_ms"][i]),
            )
            for i in range(len(solutions))
        ]

    @staticmethod
    def _check(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                content = response.json()  # /v2 routes answer {"error": "..."}
                detail = content.get("detail", content.get("error", response.text))
            except (ValueError, AttributeError):
                detail = response.text
            if response.status_code < 500:
                raise RequestError(response.status_code, detail)
            raise ServiceUnavailable(f"HTTP {response.status_code}: {_message(detail)}")
        return response.json()

    def _batch_result(self, answers: list[dict | SolveResult], mode: str) -> BatchResult:
        """The answers of one or more server batches as one result. In validate mode (or
        where any answer was validated) every row has ``relative_l2`` and an exact
        solution: a problem answered exactly (out of the envelope) has NaN and its own
        solution, whichever server batch carried it."""
        results = [a if isinstance(a, SolveResult) else SolveResult.from_json(a) for a in answers]
        validate = mode == "validate" or any(r.exact_solution is not None for r in results)
        return BatchResult(
            solutions=np.stack([r.solution for r in results]),
            modes=[r.mode for r in results],
            relative_l2=(
                np.array([np.nan if r.relative_l2 is None else r.relative_l2 for r in results])
                if validate
                else None
            ),
            exact_solutions=np.stack([_exact(r) for r in results]) if validate else None,
            results=results,
        )


def _exact(result: SolveResult) -> np.ndarray:
    """The exact solution of a problem in validate mode: NaN where the server had none."""
    if result.exact_solution is not None:
        return result.exact_solution
    if result.mode == "exact":
        return result.solution
    return np.full_like(result.solution, np.nan)


def _options(
    out_of_envelope: str, nonzero_mean: str, tolerance: float | None, max_iterations: int | None
) -> dict[str, Any]:
    """The request fields beside pde, source, coefficients, mode and model."""
    return {
        "out_of_envelope": out_of_envelope,
        "nonzero_mean": nonzero_mean,
        "tolerance": tolerance,
        "max_iterations": max_iterations,
    }


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def progress_bar(total: int, enabled: bool, desc: str, unit: str = "solve", initial: int = 0):
    """A tqdm bar where tqdm is installed and ``enabled``; else None."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit=unit)


class Client(_Base):
    """Blocking client; ``solve_batch`` sends server batches from a thread pool."""

    def __init__(self, url: str = DEFAULT_URL, **options: Any):
        super().__init__(url, **options)
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        self._http = httpx.Client(
            base_url=self.url, headers=self.headers, timeout=self.timeout, limits=limits
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """JSON in, JSON out; or ``content`` bytes in (with ``headers``) and the checked
        response out."""
        for attempt in range(self.retries + 1):
            response = None
            try:
                if content is None:
                    response = self._http.request(method, path, json=body)
                else:
                    response = self._http.request(method, path, content=content, headers=headers)
                if response.status_code not in RETRY_STATUS:
                    if content is not None and response.status_code < 400:
                        return response
                    return self._check(response)
                last = f"HTTP {response.status_code}"
            except httpx.TransportError as e:  # connection refused or dropped, timeouts
                last = f"{type(e).__name__}: {e}"
            if attempt < self.retries:
                time.sleep(self._delay(attempt, response))
        raise ServiceUnavailable(
            f"{method} {path}: no answer after {self.retries + 1} tries ({last})"
        )

    def health(self) -> dict:
        return self._request("GET", "/healthz")

    def _infer(
        self,
        pde: str,
        sources: np.ndarray,
        rows: list[CoefficientRow],
        mode: str,
        model: str | None,
        options: Mapping[str, Any],
        single: bool = False,
    ) -> list[SolveResult]:
        """Problems through ``POST /v2/models/{name}/infer`` with binary tensors (no model
        named: ``POST /v2/infer``, where the service routes each problem)."""
        body, headers = self._v2_body(pde, sources, rows, mode, options, single)
        response = self._request("POST", self._v2_path(model), content=body, headers=headers)
        return self._v2_results(response)

    def models(self) -> list[dict]:
        return self._request("GET", "/models")

    def model(self, ref: str) -> dict:
        return self._request("GET", f"/models/{ref}")

    def solve(
        self,
        pde: str,
        source: np.ndarray,
        *,
        mode: str = "surrogate",
        model: str | None = None,
        coefficients: Mapping[str, Any] | None = None,
        out_of_envelope: str = "fallback",
        nonzero_mean: str = "project",
        tolerance: float | None = None,
        max_iterations: int | None = None,
        **named: Any,
    ) -> SolveResult:
        """One problem: ``source`` (n, n); coefficients by their public names, each a
        number or an (n, n) field (``conductivity=a`` with K0 for Darcy). ``mode``:
        surrogate, exact, validate, refine or auto; ``tolerance``: the field solver's
        relative residual (auto: the error allowed)."""
        options = _options(out_of_envelope, nonzero_mean, tolerance, max_iterations)
        if self.encoding == "binary":
            source = np.asarray(source)
            if source.ndim != 2:
                raise ValueError(f"source must be (n, n), got {source.shape}")
            rows = coefficient_rows(pde, 1, coefficients, named)
            return self._infer(pde, source[None], rows, mode, model, options, single=True)[0]
        body = self._solve_body(pde, source, mode, model, coefficients, options, named)
        return SolveResult.from_json(self._request("POST", "/solve", body))

    def validate(self, pde: str, source: np.ndarray, **kwargs: Any) -> SolveResult:
        """The surrogate and the exact solver at once: ``relative_l2`` and ``exact_solution``."""
        return self.solve(pde, source, mode="validate", **kwargs)

    def solve_batch(
        self,
        pde: str,
        sources: np.ndarray,
        coefficients: np.ndarray | Mapping[str, Any] | None = None,
        *,
        mode: str = "surrogate",
        model: str | None = None,
        batch_size: int = 32,
        concurrency: int = 4,
        progress: bool = True,
        out_of_envelope: str = "fallback",
        nonzero_mean: str = "project",
        tolerance: float | None = None,
        max_iterations: int | None = None,
        on_chunk: Callable[[slice, BatchResult], None] | None = None,
        **named: Any,
    ) -> BatchResult:
        """``sources`` (N, n, n); coefficients (N, 6) or (N, 6, n, n) unified, or by name
        per pde: numbers, (N,) numbers, one (n, n) field or (N, n, n) fields each.

        Sent as server batches of ``batch_size`` with ``concurrency`` in flight; the
        answer keeps the input order. ``on_chunk(slice, result)`` sees each server batch
        as it arrives (in completion order).
        """
        sources, body = self._batch_bodies(
            pde,
            sources,
            coefficients,
            named,
            mode,
            model,
            _options(out_of_envelope, nonzero_mean, tolerance, max_iterations),
            batch_size,
        )
        bar = progress_bar(len(sources), progress, f"{pde} {mode}")
        answers: list[dict | SolveResult | None] = [None] * len(sources)
        options = _options(out_of_envelope, nonzero_mean, tolerance, max_iterations)
        rows = coefficient_rows(pde, len(sources), coefficients, named)

        def send(part: slice) -> tuple[slice, list]:
            if self.encoding == "binary":
                return part, self._infer(pde, sources[part], rows[part], mode, model, options)
            return part, self._request("POST", "/solve/batch", body(part))["items"]

        pool = ThreadPoolExecutor(max_workers=max(1, concurrency))
        try:
            futures = [pool.submit(send, p) for p in _chunks(len(sources), batch_size)]
            for future in as_completed(futures):
                part, got = future.result()
                answers[part] = got
                if on_chunk is not None:
                    on_chunk(part, self._batch_result(got, mode))
                if bar is not None:
                    bar.update(part.stop - part.start)
        except BaseException:
            # Ctrl-C or a failed batch: the batches not sent yet are dropped, not sent
            # while the caller waits (those in flight end on their own).
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        else:
            pool.shutdown()
        finally:
            if bar is not None:
                bar.close()
        return self._batch_result(answers, mode)


class AsyncClient(_Base):
    """The same on asyncio: ``await client.solve(...)``; batches with bounded concurrency."""

    def __init__(self, url: str = DEFAULT_URL, **options: Any):
        super().__init__(url, **options)
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self.headers, timeout=self.timeout, limits=limits
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        for attempt in range(self.retries + 1):
            response = None
            try:
                if content is None:
                    response = await self._http.request(method, path, json=body)
                else:
                    response = await self._http.request(
                        method, path, content=content, headers=headers
                    )
                if response.status_code not in RETRY_STATUS:
                    if content is not None and response.status_code < 400:
                        return response
                    return self._check(response)
                last = f"HTTP {response.status_code}"
            except httpx.TransportError as e:  # connection refused or dropped, timeouts
                last = f"{type(e).__name__}: {e}"
            if attempt < self.retries:
                await asyncio.sleep(self._delay(attempt, response))
        raise ServiceUnavailable(
            f"{method} {path}: no answer after {self.retries + 1} tries ({last})"
        )

    async def models(self) -> list[dict]:
        return await self._request("GET", "/models")

    async def _infer(self, pde, sources, rows, mode, model, options, single=False):
        """As :meth:`Client._infer`."""
        body, headers = self._v2_body(pde, sources, rows, mode, options, single)
        response = await self._request("POST", self._v2_path(model), content=body, headers=headers)
        return self._v2_results(response)

    async def solve(
        self,
        pde: str,
        source: np.ndarray,
        *,
        mode: str = "surrogate",
        model: str | None = None,
        coefficients: Mapping[str, Any] | None = None,
        out_of_envelope: str = "fallback",
        nonzero_mean: str = "project",
        tolerance: float | None = None,
        max_iterations: int | None = None,
        **named: Any,
    ) -> SolveResult:
        options = _options(out_of_envelope, nonzero_mean, tolerance, max_iterations)
        if self.encoding == "binary":
            rows = coefficient_rows(pde, 1, coefficients, named)
            source = np.asarray(source)[None]
            return (await self._infer(pde, source, rows, mode, model, options, single=True))[0]
        body = self._solve_body(pde, source, mode, model, coefficients, options, named)
        return SolveResult.from_json(await self._request("POST", "/solve", body))

    async def validate(self, pde: str, source: np.ndarray, **kwargs: Any) -> SolveResult:
        return await self.solve(pde, source, mode="validate", **kwargs)

    async def solve_batch(
        self,
        pde: str,
        sources: np.ndarray,
        coefficients: np.ndarray | Mapping[str, Any] | None = None,
        *,
        mode: str = "surrogate",
        model: str | None = None,
        batch_size: int = 32,
        concurrency: int = 4,
        progress: bool = True,
        out_of_envelope: str = "fallback",
        nonzero_mean: str = "project",
        tolerance: float | None = None,
        max_iterations: int | None = None,
        **named: Any,
    ) -> BatchResult:
        sources, body = self._batch_bodies(
            pde,
            sources,
            coefficients,
            named,
            mode,
            model,
            _options(out_of_envelope, nonzero_mean, tolerance, max_iterations),
            batch_size,
        )
        bar = progress_bar(len(sources), progress, f"{pde} {mode}")
        gate = asyncio.Semaphore(max(1, concurrency))
        answers: list[dict | SolveResult | None] = [None] * len(sources)
        options = _options(out_of_envelope, nonzero_mean, tolerance, max_iterations)
        rows = coefficient_rows(pde, len(sources), coefficients, named)

        async def send(part: slice) -> None:
            async with gate:
                if self.encoding == "binary":
                    got = await self._infer(pde, sources[part], rows[part], mode, model, options)
                else:
                    got = (await self._request("POST", "/solve/batch", body(part)))["items"]
            answers[part] = got
            if bar is not None:
                bar.update(part.stop - part.start)

        try:
            await asyncio.gather(*(send(p) for p in _chunks(len(sources), batch_size)))
        finally:
            if bar is not None:
                bar.close()
        return self._batch_result(answers, mode)


__all__: Sequence[str] = (
    "AsyncClient",
    "BatchResult",
    "Client",
    "PdeserveError",
    "RequestError",
    "ServiceUnavailable",
    "SolveResult",
    "coefficient_rows",
)
