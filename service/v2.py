"""Binary requests in an existing convention: the KServe / Triton v2 inference protocol
with its binary tensor data extension, shared by the service and the client (numpy and
json only).

``POST /v2/models/{name}/infer`` (or ``.../versions/{version}/infer``). The body is a JSON
header, then the raw little-endian bytes of every tensor that says
``"parameters": {"binary_data_size": BYTES}``, in the order of the header; the HTTP
header ``Inference-Header-Content-Length`` gives the JSON's length (absent: the body is
JSON alone, tensors inline as ``"data"``). A request:

    {"parameters": {"pde": "poisson", "mode": "auto", "tolerance": 0.1},
     "inputs": [
       {"name": "source", "datatype": "FP32", "shape": [n, n],
        "parameters": {"binary_data_size": 4 n^2}},
       {"name": "eigenvalue", "datatype": "FP64", "shape": [1], "data": [2.0]},
       {"name": "angle", "datatype": "FP64", "shape": [1], "data": [0.3]},
       {"name": "conductivity", "datatype": "FP32", "shape": [n, n],
        "parameters": {"binary_data_size": 4 n^2}}]}

``source`` of shape [B, n, n] is a batch of B problems (one pde and mode); a
coefficient is [1] (or []) for all, [B] per problem, [n, n] one field for all or
[B, n, n] one each; names as in ``POST /solve``. The request ``parameters`` take what
``POST /solve`` takes beside the arrays: pde, mode, tolerance, max_iterations,
out_of_envelope, nonzero_mean. The answer comes the same way (binary where the request
had a binary tensor, else JSON): ``solution`` (in the source's datatype and shape), and
per problem ``error_estimate`` and ``relative_l2`` (FP64, NaN where there is none),
``exact_solution`` (validate), and as BYTES ``mode``, ``reason``, ``model``, ``solver``
and ``warnings`` (JSON text) and ``timings_ms`` (JSON text).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"
CONTENT_TYPE = "application/octet-stream"
DATATYPES = {
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
}
DATATYPE_OF = {np.dtype("float32"): "FP32", np.dtype("float64"): "FP64", np.dtype("int64"): "INT64"}
#: The request parameters that are not tensors (as ``POST /solve`` names them).
PARAMETERS = ("pde", "mode", "tolerance", "max_iterations", "out_of_envelope", "nonzero_mean")


#: Every output an answer may have, in the order answered (``exact_solution`` and
#: ``relative_l2`` where a problem was validated, ``routed`` where one was routed): its
#: datatype and shape as the model metadata gives them (-1: a size that varies; the
#: solutions come in the source's datatype, [n, n] for a single problem).
OUTPUTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "solution": ("FP32", (-1, -1, -1)),
    "error_estimate": ("FP64", (-1,)),
    "exact_solution": ("FP32", (-1, -1, -1)),
    "relative_l2": ("FP64", (-1,)),
    **dict.fromkeys(
        ("mode", "reason", "model", "routed", "solver", "warnings", "timings_ms"), ("BYTES", (-1,))
    ),
}
#: ``Content-Encoding`` of a request body -> zlib's wbits for it ("deflate" is the zlib
#: format, as HTTP and tritonclient mean it).
ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class WireError(ValueError):
    """A body that does not follow the protocol; ``loc`` says where, as 422s do, and
    ``status`` the HTTP status it is answered with."""

    def __init__(self, loc: list[Any], message: str, status: int = 422):
        super().__init__(message)
        self.loc = loc
        self.status = status


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """``body`` as sent with ``Content-Encoding: encoding`` (gzip, deflate, identity or
    none), decompressed. Never more than ``limit`` + 1 bytes are inflated (a small body
    may inflate to gigabytes): past ``limit`` a 413, as an uncompressed body over the cap.
    A gzip body may hold several members (RFC 1952), each inflated in turn."""
    coding = (encoding or "identity").strip().lower()
    if coding == "identity":
        return body
    if coding not in ENCODINGS:
        raise WireError(
            ["header", "content-encoding"],
            f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or identity",
            status=415,
        )
    parts: list[bytes] = []
    size, rest = 0, body
    while True:
        inflate = zlib.decompressobj(ENCODINGS[coding])
        try:
            parts.append(inflate.decompress(rest, limit + 1 - size))
        except zlib.error:
            raise WireError(["body"], f"the body is not valid {coding} data") from None
        size += len(parts[-1])
        if size > limit:
            raise WireError(
                ["body"], f"request body larger than {limit} bytes once decompressed", status=413
            )
        if not inflate.eof:
            raise WireError(["body"], f"the {coding} body ends early (truncated?)")
        rest = inflate.unused_data
        if not rest or coding != "gzip":
            break
    if rest:
        raise WireError(["body"], f"{len(rest)} bytes follow the end of the {coding} data")
    return b"".join(parts)


@dataclass(frozen=True)
class Requested:
    """What a request asks of its answer: the outputs it lists under ``outputs`` (None: it
    lists none, and gets all), in its order, and which of them come as binary data."""

    names: tuple[str, ...] | None
    binary: Mapping[str, bool]
    default: bool

    @classmethod
    def parse(cls, header: dict, binary: bool) -> Requested:
        """From the inference header: each output's ``parameters.binary_data``, else the
        request's ``binary_data_output`` parameter, else ``binary`` (whether the request
        had binary tensors). A 400 for an output no answer has, naming the known ones."""
        default = (header.get("parameters") or {}).get("binary_data_output", binary)
        if not isinstance(default, bool):
            raise WireError(
                ["body", "parameters", "binary_data_output"], "binary_data_output must be a bool"
            )
        listed = header.get("outputs")
        if listed is None or listed == []:
            return cls(None, {}, default)
        if not isinstance(listed, list):
            raise WireError(["body", "outputs"], "outputs must be a list of {name, parameters}")
        flags: dict[str, bool] = {}
        for i, entry in enumerate(listed):
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(name, str):
                raise WireError(["body", "outputs", i], "each requested output needs a name")
            if name not in OUTPUTS:
                raise WireError(
                    ["body", "outputs", i, "name"],
                    f"unknown output {name!r}; known: {', '.join(OUTPUTS)}",
                    status=400,
                )
            flag = (entry.get("parameters") or {}).get("binary_data", default)
            if not isinstance(flag, bool):
                raise WireError(
                    ["body", "outputs", i, "parameters", "binary_data"],
                    f"{name}: binary_data must be a bool",
                )
            flags[name] = flag
        return cls(tuple(flags), flags, default)

    def select(self, outputs: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
        """The outputs to answer, in the order asked (one the answer lacks, such as
        ``exact_solution`` outside validate mode, is left out), and those sent as binary
        data (BYTES outputs are always JSON)."""
        names = list(outputs) if self.names is None else [n for n in self.names if n in outputs]
        chosen = {name: outputs[name] for name in names}
        return chosen, {name for name in names if self.binary.get(name, self.default)}


def _tensor_entry(name: str, value: Any, binary: bool) -> tuple[dict, bytes | None]:
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
        return {"name": name, "datatype": "BYTES", "shape": [len(value)], "data": list(value)}, None
    a = np.asarray(value)
    if a.dtype not in DATATYPE_OF:
        a = a.astype(np.float64)
    entry = {"name": name, "datatype": DATATYPE_OF[a.dtype], "shape": list(a.shape)}
    if not binary:
        entry["data"] = [None if isinstance(v, float) and v != v else v for v in a.ravel().tolist()]
        return entry, None
    raw = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
    entry["parameters"] = {"binary_data_size": len(raw)}
    return entry, raw


def encode(
    header: dict, key: str, tensors: Mapping[str, Any], binary: bool | Collection[str]
) -> tuple[bytes, int | None]:
    """A body: ``header`` with ``tensors`` as its ``key`` ("inputs" or "outputs"), the
    numeric ones as binary data (``binary`` True, or the names it holds) or inline.
    Returns (body, header length for ``Inference-Header-Content-Length``, None for plain
    JSON)."""
    entries, blobs = [], []
    for name, value in tensors.items():
        as_binary = binary if isinstance(binary, bool) else name in binary
        entry, raw = _tensor_entry(name, value, as_binary)
        entries.append(entry)
        if raw is not None:
            blobs.append(raw)
    head = json.dumps({**header, key: entries}, allow_nan=False).encode()
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)


def decode(body: bytes, header_length: str | None, key: str) -> tuple[dict, dict[str, Any]]:
    """The JSON header and its tensors by name (numpy arrays in their wire datatype, or
    lists of strings for BYTES); :class:`WireError` for anything malformed: a header
    that is not JSON, sizes that disagree with the bytes sent, unknown datatypes, shapes
    that disagree with the data."""
    if header_length is None:
        head_bytes, tail = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise WireError(
                ["header", HEADER_LENGTH.lower()],
                f"{HEADER_LENGTH} is {header_length!r}, but the body has {len(body)} bytes",
            )
        cut = int(header_length)
        head_bytes, tail = body[:cut], memoryview(body)[cut:]
    try:
        header = json.loads(head_bytes)
    except (ValueError, UnicodeDecodeError):
        raise WireError(["body"], "the inference header is not JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get(key), list):
        raise WireError(["body", key], f"the inference header needs a list of {key}")
    tensors: dict[str, Any] = {}
    offset = 0
    for i, entry in enumerate(header[key]):
        loc = ["body", key, i]
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise WireError(loc, "each tensor needs a name")
        name = entry["name"]
        if name in tensors:
            raise WireError([*loc, "name"], f"tensor {name!r} is given twice")
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise WireError(
                [*loc, "shape"], f"{name}: shape must be a list of sizes, got {shape!r}"
            )
        datatype = entry.get("datatype")
        size = (entry.get("parameters") or {}).get("binary_data_size")
        if datatype == "BYTES":
            data = entry.get("data")
            if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
                raise WireError([*loc, "data"], f"{name}: BYTES data must be a list of strings")
            tensors[name] = data
            continue
        if datatype not in DATATYPES:
            raise WireError(
                [*loc, "datatype"],
                f"{name}: datatype must be one of {', '.join(DATATYPES)} (or BYTES), got "
                f"{datatype!r}",
            )
        dtype = DATATYPES[datatype]
        count = int(np.prod(shape)) if shape else 1
        if size is not None:
            if not isinstance(size, int) or size != count * dtype.itemsize:
                raise WireError(
                    [*loc, "parameters", "binary_data_size"],
                    f"{name}: binary_data_size {size!r}, but shape {shape} of {datatype} "
                    f"needs {count * dtype.itemsize} bytes",
                )
            if offset + size > len(tail):
                raise WireError(
                    [*loc, "parameters", "binary_data_size"],
                    f"{name}: the body ends {offset + size - len(tail)} bytes short of its "
                    "binary data (truncated?)",
                )
            array = np.frombuffer(tail[offset : offset + size], dtype=dtype).reshape(shape)
            offset += size
        else:
            data = entry.get("data")
            if not isinstance(data, list):
                raise WireError([*loc, "data"], f"{name}: give data, or binary_data_size")
            try:
                array = np.asarray(data, dtype=dtype)
            except (TypeError, ValueError):
                raise WireError(
                    [*loc, "data"], f"{name}: data are not {datatype} numbers"
                ) from None
            if array.size != count:
                raise WireError(
                    [*loc, "data"], f"{name}: {array.size} values, but shape {shape} holds {count}"
                )
            array = array.reshape(shape)
        tensors[name] = array
    if offset != len(tail):
        raise WireError(
            ["body"], f"{len(tail) - offset} bytes of binary data follow the tensors' sizes"
        )
    return header, tensors


def request_items(header: dict, tensors: dict[str, Any], max_items: int) -> list[dict]:
    """Per problem, what ``POST /solve`` takes (arrays as float64 numpy arrays): the batch
    axis of ``source`` and of the coefficients taken apart. WireError for shapes that do
    not fit together."""
    params = header.get("parameters") or {}
    if not isinstance(params, dict):
        raise WireError(["body", "parameters"], "parameters must be an object")
    unknown = sorted(set(params) - set(PARAMETERS) - {"binary_data_output"})
    if unknown:
        raise WireError(
            ["body", "parameters", unknown[0]],
            f"unknown parameter {unknown[0]!r}; known: {', '.join(PARAMETERS)}",
        )
    source = tensors.get("source")
    if not isinstance(source, np.ndarray):
        raise WireError(["body", "inputs"], "an FP32 or FP64 input named 'source' is required")
    batch = source.ndim == 3
    if source.ndim not in (2, 3) or source.shape[-1] != source.shape[-2]:
        raise WireError(
            ["body", "inputs", "source", "shape"],
            f"source must be [n, n] or [B, n, n], got {list(source.shape)}",
        )
    count = source.shape[0] if batch else 1
    if not 1 <= count <= max_items:
        raise WireError(
            ["body", "inputs", "source", "shape"],
            f"{count} problems; 1..{max_items} per request",
        )
    n = source.shape[-1]
    sources = source if batch else source[None]
    columns: dict[str, list] = {}
    for name, value in tensors.items():
        if name == "source":
            continue
        if not isinstance(value, np.ndarray) or (
            value.dtype.kind != "f" and value.dtype.kind != "i"
        ):
            raise WireError(["body", "inputs", name], f"{name} must be a number tensor")
        columns[name] = _per_item(name, value, count, n)
    base = {k: v for k, v in params.items() if k != "binary_data_output"}
    return [
        base
        | {
            "source": np.asarray(sources[i], dtype=np.float64),
            "coefficients": {k: v[i] for k, v in columns.items()},
        }
        for i in range(count)
    ]


def _per_item(name: str, a: np.ndarray, count: int, n: int) -> list:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0 or a.shape == (1,):
        return [float(a.ravel()[0])] * count
    if a.shape == (count,):
        return [float(v) for v in a]
    if a.shape == (n, n):
        return [a] * count
    if a.shape == (count, n, n):
        return list(a)
    raise WireError(
        ["body", "inputs", name, "shape"],
        f"{name}: shape {list(a.shape)} fits neither [1], [{count}], [{n}, {n}] nor "
        f"[{count}, {n}, {n}]",
    )
