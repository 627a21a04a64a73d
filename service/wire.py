"""What travels over HTTP, shared by the server's schema and the client (numpy, pybase64).

- Arrays: ``{"dtype": "float32"|"float64", "shape": [n, n], "data": base64}`` of the
  little-endian bytes, row-major ([y, x]).
- Coefficients: the public field names per pde and the unified layout entry each one
  fills (datagen.systems.COEFFICIENT_NAMES).
"""

from __future__ import annotations

import binascii

import numpy as np

# SIMD base64: a 128^2 float32 field (87 KB) decodes in ~8 us and encodes in ~3 us,
# against ~290 and ~220 us for the standard library; same errors on bad input.
import pybase64

DTYPES = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}

#: pde -> {public coefficient name: unified coefficient name}, the direct form.
#: Poisson and advection-diffusion also take ``eigenvalue, angle`` instead of k11, k22, k12.
PUBLIC_COEFFICIENTS: dict[str, dict[str, str]] = {
    "poisson": {"k11": "k11", "k22": "k22", "k12": "k12"},
    "advection_diffusion": {"k11": "k11", "k22": "k22", "k12": "k12", "v1": "v1", "v2": "v2"},
    "helmholtz": {"omega": "w"},
}


def encode_array(array: np.ndarray, dtype: str = "float32") -> dict:
    a = np.ascontiguousarray(array, dtype=DTYPES[dtype])
    data = pybase64.b64encode_as_string(a.tobytes())
    return {"dtype": dtype, "shape": list(a.shape), "data": data}


def decode_array(
    dtype: str, shape: tuple[int, ...] | list[int], data: str, *, widen: bool = True
) -> np.ndarray:
    """The array as float64 (``widen``) or in its wire dtype; ValueError naming what is wrong."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    try:
        raw = pybase64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("data is not valid base64") from None
    want = int(np.prod(shape)) * DTYPES[dtype].itemsize
    if len(raw) != want:
        raise ValueError(
            f"data holds {len(raw)} bytes, but shape {list(shape)} of {dtype} needs {want}"
        )
    array = np.frombuffer(raw, dtype=DTYPES[dtype]).reshape(shape)
    return array.astype(np.float64) if widen else array.astype(DTYPES[dtype].newbyteorder("="))
