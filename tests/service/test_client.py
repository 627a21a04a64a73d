"""The client SDK against the real service: round trips, order, retries, errors, emulation."""

import http.server
import os
import subprocess
import sys
import threading
from typing import ClassVar

import h5py
import httpx
import numpy as np
import pytest
from service_helpers import API_KEY

from datagen.pipeline import write_split
from datagen.solver import solve
from datagen.spec import SamplingRanges, SplitSpec
from datagen.systems import diffusion_tensor, unified_coefficients
from service.client import AsyncClient, Client, RequestError, ServiceUnavailable
from service.emulate import EmulationError, emulate, partial_path, summary


def smooth(n=32, seed=0, zero_mean=True):
    rng = np.random.default_rng(seed)
    x = np.arange(n) / n
    xx, yy = np.meshgrid(x, x)
    f = sum(
        rng.uniform(0.2, 1) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.01)
        for cx, cy in rng.uniform(0.3, 0.7, (3, 2))
    )
    return f - f.mean() if zero_mean else f


COEFFICIENTS = {
    "poisson": {"k11": 0.02, "k22": 0.01, "k12": 0.002},
    "advection_diffusion": {"eigenvalue": 2.0, "angle": 0.3, "v1": 0.1, "v2": 0.05},
    "helmholtz": {"omega": 4.0},
}


@pytest.fixture(scope="module")
def sdk(service):
    with Client(service, api_key=API_KEY, dtype="float64") as c:
        yield c


@pytest.mark.parametrize("pde", list(COEFFICIENTS))
@pytest.mark.parametrize("mode", ["surrogate", "exact", "validate"])
def test_round_trip(sdk, pde, mode):
    f = smooth(zero_mean=pde != "helmholtz")
    result = sdk.solve(pde, f, mode=mode, **COEFFICIENTS[pde])
    assert result.solution.shape == f.shape and np.isfinite(result.solution).all()
    assert result.mode == mode
    if mode == "exact":
        c = {"k11": 0.02, "k22": 0.01, "k12": 0.002} if pde == "poisson" else None
        if c is not None:
            want = solve(pde, f, unified_coefficients(**c))
            assert np.allclose(result.solution, want, atol=1e-12 * np.abs(want).max())
    if mode == "validate":
        e = result.exact_solution
        err = np.linalg.norm(result.solution - e) / np.linalg.norm(e)
        assert result.relative_l2 == pytest.approx(err, rel=1e-9)
    else:
        assert result.exact_solution is None and result.relative_l2 is None


def test_solve_batch_keeps_order_under_concurrency(sdk):
    n = 37
    sources = np.stack([smooth(seed=i, zero_mean=False) for i in range(n)])
    omega = 1.0 + (np.arange(n) % 10)
    got = sdk.solve_batch(
        "helmholtz",
        sources,
        omega=omega,
        mode="exact",
        batch_size=4,
        concurrency=4,
        progress=False,
    )
    assert got.solutions.shape == sources.shape and got.modes == ["exact"] * n
    want = solve("helmholtz", sources, unified_coefficients(0.01, 0.01, w=omega))
    assert np.allclose(got.solutions, want, atol=1e-10 * np.abs(want).max())
    unified = unified_coefficients(0.01, 0.01, w=omega)  # the (N, 6) form gives the same
    again = sdk.solve_batch(
        "helmholtz", sources, unified, mode="exact", batch_size=5, concurrency=3, progress=False
    )
    assert np.array_equal(again.solutions, got.solutions)


def test_validate_batch_returns_errors_per_example(sdk):
    sources = np.stack([smooth(seed=i) for i in range(6)])
    got = sdk.solve_batch(
        "poisson",
        sources,
        k11=0.01,
        k22=0.02,
        k12=0.0,
        mode="validate",
        batch_size=4,
        progress=False,
    )
    diff = np.linalg.norm(got.solutions - got.exact_solutions, axis=(1, 2))
    assert np.allclose(got.relative_l2, diff / np.linalg.norm(got.exact_solutions, axis=(1, 2)))


@pytest.mark.parametrize("encoding", ["binary", "json"])
def test_a_validate_batch_whose_server_batches_differ_in_fallbacks(service, encoding):
    """The first server batch lies outside the model's envelope (eigenvalue 7: answered
    exactly), the second inside it (validated): one result, every row with its exact
    solution and NaN where no surrogate answered."""
    sources = np.stack([smooth(seed=i) for i in range(8)])
    eig = np.where(np.arange(8) < 4, 7.0, 2.0)
    with Client(service, api_key=API_KEY, encoding=encoding) as client:
        chunks = []
        got = client.solve_batch(
            "poisson",
            sources,
            eigenvalue=eig,
            angle=0.3,
            mode="validate",
            batch_size=4,
            progress=False,
            on_chunk=lambda part, result: chunks.append((part.start, result)),
        )
    assert got.modes == ["exact"] * 4 + ["validate"] * 4
    assert np.isnan(got.relative_l2[:4]).all() and (got.relative_l2[4:] > 0).all()
    assert np.array_equal(got.exact_solutions[:4], got.solutions[:4])
    k = 0.01 * diffusion_tensor(eig, 0.3)  # K = 0.01 R(-t) diag(1, e) R(t), rows k11 k22 k12
    want = solve("poisson", sources, unified_coefficients(k[:, 0], k[:, 1], k[:, 2]))
    assert np.allclose(got.exact_solutions, want, atol=1e-5 * np.abs(want).max())
    first = dict(chunks)[0]  # a server batch of fallbacks alone, as on_chunk sees it
    assert first.modes == ["exact"] * 4 and np.isnan(first.relative_l2).all()


def test_emulate_validate_with_a_batch_of_fallbacks(service, tmp_path):
    ranges = SamplingRanges(eig=(6.0, 8.0))  # outside the test model's (1, 5)
    spec = SplitSpec(system="poisson", n_examples=8, resolution=32, seed=3, ranges=ranges)
    data = write_split(spec, tmp_path / "outside.h5", progress=False)
    with Client(service, api_key=API_KEY) as client:
        out = emulate(client, data, tmp_path / "pred.h5", mode="validate", batch_size=4,
                      progress=False)  # fmt: skip
    assert not partial_path(out).exists()
    with h5py.File(out, "r") as f:
        assert f["done"][()].all() and np.isnan(f["relative_l2"][()]).all()
        assert np.isnan(f["error_estimate"][()]).all()
        assert [a.decode() for a in f["answered"][()]] == ["exact"] * 8
    said = summary(out)  # what `pdeserve emulate` prints at the end
    assert said.startswith("8 examples answered: exact 8; 8 not by the validate mode asked")
    assert "outside the model's training range" in said, said


def test_async_client(service):
    import asyncio

    async def main():
        async with AsyncClient(service, api_key=API_KEY) as client:
            one = await client.solve("helmholtz", smooth(zero_mean=False), omega=3)
            many = await client.solve_batch(
                "helmholtz",
                np.stack([smooth(seed=i, zero_mean=False) for i in range(9)]),
                omega=np.arange(1, 10),
                mode="exact",
                batch_size=2,
                concurrency=3,
                progress=False,
            )
            return one, many

    one, many = asyncio.run(main())
    assert one.mode == "surrogate" and many.solutions.shape == (9, 32, 32)


def test_typed_errors_carry_the_servers_message(sdk):
    with pytest.raises(RequestError) as info:
        sdk.solve("helmholtz", smooth(zero_mean=False), omega=-1)
    assert info.value.status == 422 and "omega" in info.value.message
    with pytest.raises(RequestError) as info:
        sdk.solve("helmholtz", smooth(zero_mean=False), omega=2, model="nosuch")
    assert info.value.status == 404 and "nosuch" in info.value.message
    with pytest.raises(ValueError, match="unknown pde"):
        sdk.solve("heat", smooth(), omega=1)


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers POSTs with 503 twice, then drops one connection, then forwards everything
    to the service (binary bodies and their headers too)."""

    upstream = ""
    script: ClassVar[list[str]] = []
    seen = 0
    FORWARD = ("content-type", "inference-header-content-length")

    def do_GET(self):
        self._forward(httpx.get(self.upstream + self.path, timeout=60, headers=self._headers()))

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen += 1
        step = self.script.pop(0) if self.script else "forward"
        if step == "503":
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif step == "drop":
            self.connection.shutdown(2)  # no answer at all
        else:
            url = self.upstream + self.path
            self._forward(httpx.post(url, content=body, timeout=60, headers=self._headers()))

    def _headers(self) -> dict:
        kept = {k: v for k, v in self.headers.items() if k.lower() in self.FORWARD}
        return kept | {"X-API-Key": API_KEY}

    def _forward(self, r: httpx.Response) -> None:
        self.send_response(r.status_code)
        for key, value in r.headers.items():
            if key.lower() in self.FORWARD:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(r.content)))
        self.end_headers()
        self.wfile.write(r.content)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky(service):
    _Flaky.upstream, _Flaky.seen = service, 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_retries_503_and_dropped_connections(flaky):
    _Flaky.script = ["503", "503", "drop"]
    with Client(flaky, backoff=0.01, retries=4) as client:
        result = client.solve("helmholtz", smooth(zero_mean=False), omega=2, mode="exact")
    assert result.mode == "exact" and _Flaky.seen == 4


def test_gives_up_after_the_last_retry(flaky):
    _Flaky.script = ["503"] * 10
    with Client(flaky, backoff=0.01, retries=2) as client, pytest.raises(ServiceUnavailable):
        client.solve("helmholtz", smooth(zero_mean=False), omega=2)
    assert _Flaky.seen == 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    spec = SplitSpec(system="helmholtz", n_examples=22, resolution=32, seed=5)
    return write_split(spec, tmp_path_factory.mktemp("emulate") / "input.h5", progress=False)


class _Interrupting(Client):
    """Stops (as Ctrl-C would) once its n-th server batch is in; counts examples sent."""

    def __init__(self, *args, stop_after=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.stop_after, self.batches, self.sent = stop_after, 0, 0

    def solve_batch(self, pde, sources, *args, on_chunk=None, **kwargs):
        self.sent += len(sources)

        def then_stop(part, result):
            on_chunk(part, result)
            self.batches += 1
            if self.batches == self.stop_after:
                raise KeyboardInterrupt

        return super().solve_batch(pde, sources, *args, on_chunk=then_stop, **kwargs)


def _read(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}


def test_emulate_interrupted_and_resumed_gives_the_same_file(service, dataset, tmp_path):
    kwargs = dict(mode="validate", progress=False)
    with Client(service, api_key=API_KEY) as client:
        whole = emulate(client, dataset, tmp_path / "whole.h5", batch_size=2, **kwargs)
    out = tmp_path / "resumed.h5"
    with (
        _Interrupting(service, api_key=API_KEY, stop_after=3) as client,
        pytest.raises(KeyboardInterrupt),
    ):
        emulate(client, dataset, out, batch_size=2, concurrency=1, **kwargs)
    assert not out.exists() and partial_path(out).exists()
    with h5py.File(partial_path(out), "r") as f:  # every batch that came back is kept
        assert list(f["done"][()]) == [1] * 6 + [0] * 16
    # Batch size and concurrency may change on resume; the examples left go, none twice.
    with _Interrupting(service, api_key=API_KEY) as client:
        emulate(client, dataset, out, batch_size=5, concurrency=3, **kwargs)
    assert client.sent == 16
    a, b = _read(whole), _read(out)
    assert set(a) == set(b) >= {"fields", "coefficients", "tensor", "relative_l2", "done"}
    for key in ("coefficients", "tensor", "done"):
        assert np.array_equal(a[key], b[key])
    assert np.array_equal(a["fields"][:, 0], b["fields"][:, 0])
    assert np.allclose(a["fields"][:, 1], b["fields"][:, 1], rtol=0, atol=1e-6)
    assert np.allclose(a["relative_l2"], b["relative_l2"], rtol=1e-5)
    with h5py.File(dataset, "r") as f:
        assert np.array_equal(a["fields"][:, 0], f["fields"][:, 0])
    from datagen.dataset import open_dataset

    with open_dataset(out) as reader:  # a dataset pdeserve reads back
        assert len(reader) == 22 and reader.system.name == "helmholtz"


def test_emulate_resumed_with_other_settings_names_the_flags(service, dataset, tmp_path):
    out = tmp_path / "out.h5"
    with (
        _Interrupting(service, api_key=API_KEY, stop_after=1) as client,
        pytest.raises(KeyboardInterrupt),
    ):
        emulate(client, dataset, out, mode="surrogate", batch_size=4, progress=False)
    with Client(service, api_key=API_KEY) as client, pytest.raises(EmulationError) as e:
        emulate(client, dataset, out, mode="validate", tolerance=1e-6, progress=False)
    message = str(e.value)
    assert "--mode: the run used surrogate, now validate" in message
    assert "--tolerance: the run used (default), now 1e-06" in message
    assert "Repeat --mode, --tolerance as they were" in message and "delete" in message
    assert not any(word in message for word in ("emulate_mode", "emulate_tol", "np.", "int64"))


def test_client_needs_no_ray_torch_or_pydantic():
    code = (
        "import sys, service.client, service.emulate, service.client_cli\n"
        "heavy = [m for m in ('ray', 'torch', 'pydantic', 'onnxruntime') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pdeserve_solve_from_the_shell(service, tmp_path):
    np.save(tmp_path / "f.npy", smooth(zero_mean=False))
    env = os.environ | {"PDESERVE_API_KEY": API_KEY}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pdeserve.cli",
            "solve",
            "--url",
            service,
            "--pde",
            "helmholtz",
            "--source",
            str(tmp_path / "f.npy"),
            "--omega",
            "4",
            "--mode",
            "validate",
            "--out",
            str(tmp_path / "u.npy"),
            "--plot",
            str(tmp_path / "u.png"),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "relative L2 vs exact" in run.stdout
    assert np.load(tmp_path / "u.npy").shape == (32, 32)
    assert (tmp_path / "u.png").stat().st_size > 10_000


def _conductivity(n=32, seed=0, contrast=10.0):
    from datagen.media import conductivity, gaussian_random_fields

    g = gaussian_random_fields(np.random.default_rng(seed), np.array([0.15]), n)
    return conductivity(g, np.array([contrast]), "smooth")[0]


def test_field_coefficients_by_name_and_as_unified_arrays(sdk):
    from datagen.systems import diffusion_tensor, unified_field

    f, a = smooth(), _conductivity()
    exact = sdk.solve(
        "poisson", f, eigenvalue=2.0, angle=0.3, conductivity=a, mode="exact", tolerance=1e-10
    )
    k0 = 0.01 * diffusion_tensor(2.0, 0.3)[0]
    c = unified_field(a * k0[0], a * k0[1], a * k0[2])
    want = solve("poisson", f, c, tolerance=1e-12)
    assert np.linalg.norm(exact.solution - want) < 1e-8 * np.linalg.norm(want)
    assert exact.solver["method"] == "cg" and exact.error_estimate is None
    surrogate = sdk.solve("poisson", f, eigenvalue=2.0, angle=0.3, conductivity=a)
    assert surrogate.mode == "surrogate" and surrogate.error_estimate > 0
    sources = np.stack([smooth(seed=i) for i in range(3)])
    fields = np.stack([unified_field(_conductivity(seed=i) * 0.01, 0.01, 0.0) for i in range(3)])
    got = sdk.solve_batch(
        "poisson", sources, fields, mode="exact", tolerance=1e-10, batch_size=2, progress=False
    )
    want = solve("poisson", sources, fields, tolerance=1e-12)
    assert np.allclose(got.solutions, want, rtol=0, atol=1e-8 * np.abs(want).max())
    assert np.isnan(got.error_estimates).all()
    # by name: (N, n, n) fields and numbers
    named = sdk.solve_batch(  # routed to banded, whose estimates belie its card: asked for
        "poisson", sources, k11=fields[:, 0], k22=0.01, k12=0.0, mode="surrogate",
        out_of_envelope="surrogate", progress=False,
    )  # fmt: skip
    assert named.modes == ["surrogate"] * 3 and np.isfinite(named.error_estimates).all()
    with pytest.raises(ValueError, match="k11"):
        sdk.solve_batch("poisson", sources, k11=fields[:2, 0], k22=0.01, k12=0.0, progress=False)


def test_emulate_carries_coefficient_fields_through(service, tmp_path):
    from datagen.dataset import open_dataset
    from datagen.spec import FieldLaw

    spec = SplitSpec(
        system="poisson", n_examples=6, resolution=32, seed=3, field_law=FieldLaw(kind="two-phase")
    )
    data = write_split(spec, tmp_path / "darcy.h5", progress=False)
    with Client(service, api_key=API_KEY) as client:
        out = emulate(client, data, tmp_path / "out.h5", mode="validate", batch_size=2)
    with open_dataset(data) as inp, open_dataset(out) as got:
        assert got.has_fields and got.field_columns == inp.field_columns
        assert np.array_equal(got.read().coefficient_fields, inp.read().coefficient_fields)
    with h5py.File(out, "r") as f:
        assert (
            np.isfinite(f["error_estimate"][()]).all() and np.isfinite(f["relative_l2"][()]).all()
        )


def test_pdeserve_solve_takes_fields_from_npy_files(service, tmp_path):
    np.save(tmp_path / "f.npy", smooth())
    np.save(tmp_path / "a.npy", _conductivity())
    env = os.environ | {"PDESERVE_API_KEY": API_KEY}
    command = [sys.executable, "-m", "pdeserve.cli", "solve", "--url", service]
    command += ["--pde", "poisson", "--source", str(tmp_path / "f.npy")]
    flags = ["--eigenvalue", "2", "--angle", "0.3", "--conductivity", str(tmp_path / "a.npy")]
    run = subprocess.run(
        [*command, *flags, "--mode", "auto", "--out", str(tmp_path / "u.npy")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    # the test model's card measures no error per band: auto answers with the solver
    assert "answered by exact" in run.stdout and "cg solve" in run.stdout
    assert "auto: the exact solver; predicted: surrogate error unknown" in run.stdout
    bad = subprocess.run(
        [*command, "--conductivity", "nofile.npy", "--out", "x"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert bad.returncode == 2 and "neither a number nor a .npy file" in bad.stderr
