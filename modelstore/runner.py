"""Runs a published model in ONNX Runtime: no torch, no pickle, checksums verified."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from datagen.resample import resample, sample_coefficients
from modelstore.registry import (
    CARD,
    DEFAULT_MODEL,
    DEFAULT_REGISTRY,
    ONNX,
    ModelCard,
    Registry,
    RegistryError,
    checked_files,
)


def read_model_dir(directory: Path) -> tuple[ModelCard, dict[str, bytes]]:
    """A published version copied to a folder: the card and its files, checksums verified."""
    card = ModelCard.model_validate_json((directory / CARD).read_bytes())
    return card, checked_files(card, lambda name: (directory / name).read_bytes(), str(directory))


def locate(
    model: str | None, registry: str = DEFAULT_REGISTRY
) -> tuple[ModelCard, dict[str, bytes]]:
    """``model``: a folder holding card.json, or NAME[@VERSION] in ``registry`` (or the default)."""
    ref = model or DEFAULT_MODEL
    if Path(ref).is_dir():
        return read_model_dir(Path(ref))
    try:
        return Registry(registry).read_files(ref)
    except RegistryError as e:
        if model is None:
            raise RegistryError(
                f"no default model {ref!r} in {registry}: pass --model ({e})"
            ) from None
        raise


class OnnxSurrogate:
    """source (B, n, n), coefficients (B, 6) -> solution (B, n, n), in batches.

    On the CPU a lone problem runs in one call that uses every ORT thread (the lowest
    latency), while several run one sample per call on single-thread sessions, one per
    thread, side by side: ORT's intra-op threads share one sample's work at 1.5x on 2 cores,
    independent streams reach 2x, and a stream that loses its core to another process
    (the HTTP ingress) does not hold the others at a barrier.
    """

    def __init__(
        self,
        card: ModelCard,
        onnx_bytes: bytes,
        threads: int | None = None,
        *,
        fields: bool = False,
    ):
        import onnxruntime as ort

        self.card = card
        self.fields = fields  # the graph takes (B, 6, n, n) coefficient fields, not (B, 6)
        self._onnx = onnx_bytes
        self.threads = threads or _usable_cpus()
        providers = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = _session(onnx_bytes, threads, providers)
        self.providers = self.session.get_providers()
        self._threads: ThreadPoolExecutor | None = None
        self._stream_session = None
        self._lock = threading.Lock()
        self._queued = 0  # samples submitted and not yet answered

    @classmethod
    def load(
        cls,
        model: str | None = None,
        registry: str = DEFAULT_REGISTRY,
        threads: int | None = None,
        *,
        fields: bool = False,
    ) -> OnnxSurrogate:
        """The model's graph for (B, 6) coefficients, or with ``fields`` for (B, 6, n, n)."""
        card, files = locate(model, registry)
        if fields:
            name = card.graphs.get("fields")
            if name is None or name not in files:
                raise RegistryError(
                    f"{card.ref} has no graph for coefficient fields (exported before fields "
                    "existed); export its checkpoint again"
                )
            return cls(card, files[name], threads=threads, fields=True)
        if ONNX not in files:
            if card.name is None:  # a folder: a training checkpoint, never exported
                raise RegistryError(
                    f"{model} is a training checkpoint (weights and card, no {ONNX}); export "
                    f"it first: python -m training.export --checkpoint {model} --name NAME "
                    "[--registry ROOT], then evaluate NAME"
                )
            raise RegistryError(f"{card.ref} has no {ONNX}")
        return cls(card, files[ONNX], threads=threads)

    def predict(self, source: np.ndarray, coefficients: np.ndarray, batch: int = 32) -> np.ndarray:
        """Solutions on the sources' grid; another grid than the model's is resampled
        spectrally to it and back (exact for fields band-limited below both Nyquists;
        coefficient fields go with the sources, see :meth:`_on_model_grid`). ``batch``:
        samples per call where a batch runs whole (one thread, or a GPU)."""
        source, coefficients, back = self._on_model_grid(source, coefficients)
        return back(np.concatenate(list(self._batches(source, coefficients, batch))))

    def submit(self, source: np.ndarray, coefficients: np.ndarray) -> Future:
        """``predict(source, coefficients)`` in the background: a Future of the solutions.

        On the CPU with several threads every sample joins one queue that the streams work
        through in arrival order, so the samples of concurrent calls keep all streams
        busy: none idles while another finishes a call's last sample, nor between calls.
        A lone sample on idle streams runs on all threads (the lowest latency), and calls
        run whole on a GPU or on one thread.
        """
        count = len(source)
        with self._lock:
            streamed = self._on_cpu() and (count > 1 or self._queued > 0)
            self._queued += count
        if not streamed:
            return _all_of(
                [self._pool().submit(self.predict, source, coefficients)],
                lambda blocks: blocks[0],
                partial(self._answered, count),
            )
        source, coefficients, back = self._on_model_grid(source, coefficients)
        session, pool = self._single_thread_streams()
        samples = [
            pool.submit(_run, session, s[None], c[None])
            for s, c in zip(source, coefficients, strict=True)
        ]
        return _all_of(
            samples, lambda blocks: back(np.concatenate(blocks)), partial(self._answered, count)
        )

    def _on_model_grid(
        self, source: np.ndarray, coefficients: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]:
        """``source`` and ``coefficients`` as float32 on the model's grid, and what brings
        solutions back to the source's grid (spectral resampling, exact for fields
        band-limited below both Nyquists; coefficient fields by their point values where
        the grids divide, :func:`datagen.resample.sample_coefficients`)."""
        coefficients = np.asarray(coefficients, dtype=np.float32)
        if (coefficients.ndim == 4) != self.fields:
            want = "(B, 6, n, n) fields" if self.fields else "(B, 6) scalars"
            raise ValueError(f"this graph takes coefficients as {want}, got {coefficients.shape}")
        n, grid = source.shape[-1], self.card.resolution or source.shape[-1]
        if grid == n:
            return np.asarray(source, dtype=np.float32), coefficients, lambda solution: solution
        on_grid = np.asarray(resample(source, grid), dtype=np.float32)
        if self.fields:
            coefficients = np.asarray(sample_coefficients(coefficients, grid), dtype=np.float32)
        return on_grid, coefficients, lambda solution: resample(solution, n).astype(np.float32)

    def _answered(self, count: int) -> None:
        with self._lock:
            self._queued -= count

    def _on_cpu(self) -> bool:
        return self.threads > 1 and self.providers[0] == "CPUExecutionProvider"

    def _batches(self, source, coefficients, batch) -> Iterator[np.ndarray]:
        if len(source) > 1 and self._on_cpu():
            session, pool = self._single_thread_streams()
            run = partial(_run, session)
            yield from pool.map(run, source[:, None], coefficients[:, None])
            return
        for i in range(0, len(source), batch):
            yield _run(self.session, source[i : i + batch], coefficients[i : i + batch])

    def _pool(self) -> ThreadPoolExecutor:
        """The threads that run calls and samples: one per ORT thread on the CPU (the
        streams), one elsewhere (a GPU, or one thread, runs a call whole)."""
        with self._lock:
            if self._threads is None:
                workers = self.threads if self._on_cpu() else 1
                self._threads = ThreadPoolExecutor(workers, thread_name_prefix="ort-stream")
            return self._threads

    def _single_thread_streams(self):
        """A single-thread session (ORT runs it from several threads at once) and the pool
        whose threads are the streams; made on first use, so a latency-only user never
        pays for it."""
        pool = self._pool()
        with self._lock:
            if self._stream_session is None:
                self._stream_session = _session(self._onnx, 1, ["CPUExecutionProvider"])
            return self._stream_session, pool


def _all_of(
    parts: list[Future],
    combine: Callable[[list[np.ndarray]], np.ndarray],
    answered: Callable[[], None],
) -> Future:
    """A Future of ``combine`` over the results of ``parts`` in order, set by the thread
    that finishes the last of them (after ``answered()``); the first error fails it."""
    out: Future = Future()
    out.set_running_or_notify_cancel()
    left = [len(parts)]
    lock = threading.Lock()

    def one_done(_: Future) -> None:
        with lock:
            left[0] -= 1
            if left[0]:
                return
        answered()
        try:
            out.set_result(combine([f.result() for f in parts]))
        except BaseException as e:  # handed to the caller through ``out``
            out.set_exception(e)

    for f in parts:
        f.add_done_callback(one_done)
    return out


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _run(session, source: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    return session.run(None, {"source": source, "coefficients": coefficients})[0]


def _session(onnx_bytes: bytes, threads: int | None, providers: list[str]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle pool threads sleep instead of spinning: a replica shares its cores with the
    # HTTP ingress (spinning bought no speed when measured).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # onnxruntime-gpu lists CUDA even where its libraries are missing and logs an
    # error as it falls back to the CPU: ask quietly, report what was granted.
    ort.set_default_logger_severity(4)
    try:
        return ort.InferenceSession(onnx_bytes, options, providers=providers)
    finally:
        ort.set_default_logger_severity(2)
