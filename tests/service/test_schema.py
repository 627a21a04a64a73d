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


def _smooth(n=32, phase=0.0):
    x = np.arange(n) / n
    xx, yy = np.meshgrid(x, x)
    return 1 + 0.5 * np.sin(2 * np.pi * (xx + phase)) * np.cos(2 * np.pi * yy)


def _request(pde, **coefficients):
    return ADAPTER.validate_python({"pde": pde, "source": _source(), "coefficients": coefficients})


def test_field_coefficients_fill_the_unified_field_layout():
    a = _smooth()
    k = _request(
        "poisson", k11=(0.01 * a).tolist(), k22=0.02, k12=EncodedArray.encode(0.001 * a, "float64")
    )
    assert k.unified().shape == (6, 32, 32)
    assert np.array_equal(k.unified()[0], 0.01 * a) and np.all(k.unified()[1] == 0.02)
    assert np.array_equal(k.unified()[2], 0.001 * a) and not k.unified()[3:].any()
    # the paper's form, point by point
    e = _request("poisson", eigenvalue=(2 * a).tolist(), angle=0.4).unified()
    want = DIFFUSION_SCALE * diffusion_tensor((2 * a).ravel(), np.full(a.size, 0.4))
    assert np.allclose(e[:3].reshape(3, -1), want.T, rtol=1e-14, atol=0)
    h = _request("helmholtz", omega=(4 * a).tolist()).unified()
    assert np.array_equal(h[5], 4 * a) and np.all(h[0] == h[1]) and np.all(h[0] == DIFFUSION_SCALE)
    assert _request("helmholtz", omega=4).unified().shape == (6,)


def test_the_darcy_form_multiplies_a_constant_tensor_by_the_conductivity():
    a = _smooth()
    darcy = _request("poisson", eigenvalue=3, angle=0.2, conductivity=a.tolist()).unified()
    k0 = _request("poisson", eigenvalue=3, angle=0.2).unified()
    assert np.allclose(darcy[:3], a[None] * k0[:3, None, None], rtol=1e-15, atol=0)
    scalar = _request("poisson", k11=0.01, k22=0.02, k12=0.0, conductivity=2.0).unified()
    assert scalar.shape == (6,) and np.allclose(scalar[:3], [0.02, 0.04, 0.0])


def test_velocity_fields_are_made_exactly_divergence_free():
    from datagen.field_operator import divergence_free

    x = np.arange(32) / 32
    xx, yy = np.meshgrid(x, x)
    # the curl of sin(2 pi x) sin(2 pi y), and a gradient part of 1e-4 of it
    v1 = 0.02 * np.sin(2 * np.pi * xx) * np.cos(2 * np.pi * yy)
    v2 = -0.02 * np.cos(2 * np.pi * xx) * np.sin(2 * np.pi * yy)
    wobble = 2e-6 * np.cos(2 * np.pi * xx)
    req = _request(
        "advection_diffusion", k11=0.01, k22=0.01, k12=0, v1=(v1 + wobble).tolist(), v2=v2.tolist()
    )
    v = req.unified()[3:5]
    _, relative = divergence_free(v[None])
    assert relative[0] < 1e-12 and np.allclose(v, [v1, v2], rtol=0, atol=1e-5)
    assert not np.allclose(v[0], v1 + wobble, rtol=0, atol=1e-7)  # the wobble is gone


def test_a_512_request_with_every_field_fits_the_body_cap():
    import json

    from service.settings import ServiceSettings

    n = 512
    a = _smooth(n)
    f = EncodedArray.encode(_source(n), "float32").model_dump()
    fields = {
        k: EncodedArray.encode(c * a, "float32").model_dump()
        for k, c in [("k11", 0.01), ("k22", 0.01), ("k12", 0.001)]
    }
    shear = np.outer(np.sin(2 * np.pi * np.arange(n) / n), np.ones(n))
    fields |= {"v1": EncodedArray.encode(0.1 * shear).model_dump(), "v2": 0.0}
    raw = json.dumps({"pde": "advection_diffusion", "source": f, "coefficients": fields})
    assert len(raw) < ServiceSettings().max_body_bytes
    assert ADAPTER.validate_json(raw).unified().shape == (6, n, n)
