"""The request schema without a server: encodings, coefficient forms, errors naming fields."""

import base64

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from datagen.systems import DIFFUSION_SCALE, diffusion_tensor
from service.schema import EncodedArray, SolveRequest, encode_like, relative_l2

ADAPTER = TypeAdapter(SolveRequest)


def _source(n=32, seed=0):
    f = np.random.default_rng(seed).standard_normal((n, n))
    return f - f.mean()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_base64_round_trip_is_exact(dtype):
    f = _source().astype(dtype)
    encoded = EncodedArray.encode(f, dtype)
    assert np.array_equal(encoded.decode(), f.astype(np.float64))
    wire_bytes = f.astype(f"<{dtype[0]}{f.itemsize}").tobytes()
    # the standard library is the independent check of the (SIMD) codec, both ways
    assert base64.b64decode(encoded.data) == wire_bytes
    data = base64.b64encode(wire_bytes).decode()
    other = EncodedArray(dtype=dtype, shape=list(f.shape), data=data)
    assert np.array_equal(other.decode(), f.astype(np.float64))


def test_encode_like_answers_in_the_request_encoding():
    f = _source()
    as_lists = encode_like(f, f.tolist())
    assert isinstance(as_lists, list) and np.array_equal(np.asarray(as_lists), f)
    as_b64 = encode_like(f, EncodedArray.encode(f, "float64"))
    assert as_b64.dtype == "float64" and np.array_equal(as_b64.decode(), f)


def test_eigenvalue_and_angle_give_the_papers_tensor():
    req = ADAPTER.validate_python(
        {
            "pde": "poisson",
            "source": _source().tolist(),
            "coefficients": {"eigenvalue": 4, "angle": 0.7},
        }
    )
    want = DIFFUSION_SCALE * diffusion_tensor(4.0, 0.7)[0]
    assert np.allclose(req.unified()[:3], want) and np.all(req.unified()[3:] == 0)


def test_each_pde_maps_to_the_unified_layout():
    src = _source().tolist()
    ad = ADAPTER.validate_python(
        {
            "pde": "advection_diffusion",
            "source": src,
            "coefficients": {"k11": 0.02, "k22": 0.01, "k12": 0.001, "v1": 0.3, "v2": -0.1},
        }
    )
    assert np.allclose(ad.unified(), [0.02, 0.01, 0.001, 0.3, -0.1, 0])
    h = ADAPTER.validate_python({"pde": "helmholtz", "source": src, "coefficients": {"omega": 3}})
    assert np.allclose(h.unified(), [0.01, 0.01, 0, 0, 0, 3])


def _error(body) -> str:
    with pytest.raises(ValidationError) as info:
        ADAPTER.validate_python(body)
    return str(info.value)


def test_errors_name_the_field_and_the_reason():
    src = _source().tolist()
    assert "k12" in _error({"pde": "poisson", "source": src, "coefficients": {"k11": 1, "k22": 1}})
    assert "positive definite" in _error(
        {"pde": "poisson", "source": src, "coefficients": {"k11": 1, "k22": 1, "k12": 2}}
    )
    assert "omega" in _error({"pde": "helmholtz", "source": src, "coefficients": {"omega": -1}})
    assert "Extra inputs" in _error(
        {"pde": "helmholtz", "source": src, "coefficients": {"omega": 1, "k11": 1}}
    )
    bad = EncodedArray.encode(_source()).model_dump() | {"data": "%%%"}
    assert "base64" in _error({"pde": "helmholtz", "source": bad, "coefficients": {"omega": 1}})


def test_relative_l2_is_defined_for_zero_references():
    z = np.zeros((4, 4))
    assert relative_l2(z, z) == 0.0
    assert relative_l2(np.ones((4, 4)), z) is None
    assert relative_l2(2 * np.ones((4, 4)), np.ones((4, 4))) == pytest.approx(1.0)


def test_the_wire_names_are_the_schemas_fields():
    from datagen.systems import COEFFICIENT_NAMES
    from service.schema import (
        AdvectionDiffusionCoefficients,
        DiffusionCoefficients,
        HelmholtzCoefficients,
    )
    from service.wire import PUBLIC_COEFFICIENTS

    models = {
        "poisson": DiffusionCoefficients,
        "advection_diffusion": AdvectionDiffusionCoefficients,
        "helmholtz": HelmholtzCoefficients,
    }
    for pde, model in models.items():
        assert set(PUBLIC_COEFFICIENTS[pde]) <= set(model.model_fields)
        values = dict.fromkeys(PUBLIC_COEFFICIENTS[pde], 0.5) | {"k12": 0.1}
        values = {k: v for k, v in values.items() if k in PUBLIC_COEFFICIENTS[pde]}
        unified = model(**values).unified()
        for public, name in PUBLIC_COEFFICIENTS[pde].items():
            assert unified[COEFFICIENT_NAMES.index(name)] == values[public]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.nan, "NaN or Inf"),
        (np.inf, "NaN or Inf"),
        (-np.inf, "NaN or Inf"),
        (-2e12, "beyond"),
        (2e12, "beyond"),
    ],
)
def test_grids_with_a_bad_value_anywhere_are_refused(value, message):
    from service.schema import check_grid

    a = np.zeros((32, 32))
    check_grid(a)
    a[5, 7] = value
    with pytest.raises(ValueError, match=message):
        check_grid(a)


def test_a_source_is_checked_and_decoded_once_and_unified_computed_once():
    f = np.random.default_rng(1).standard_normal((32, 32))
    request = TypeAdapter(SolveRequest).validate_python(
        {"pde": "helmholtz", "source": EncodedArray.encode(f), "coefficients": {"omega": 3}}
    )
    assert request.source._checked and request.source_array() is request.source_array()
    assert request.unified() is request.unified()
    assert np.array_equal(request.source_array(), f.astype(np.float32).astype(np.float64))


def test_one_problem_of_scalars_stacks_as_arrays_do():
    from datagen.systems import unified_coefficients

    scalars = unified_coefficients(0.02, 0.01, 0.003, v1=0.1, v2=-0.2, w=3)
    arrays = unified_coefficients(np.array([0.02]), 0.01, 0.003, v1=0.1, v2=-0.2, w=3)
    assert scalars.shape == arrays.shape == (1, 6) and scalars.dtype == arrays.dtype
    assert np.array_equal(scalars, arrays)
