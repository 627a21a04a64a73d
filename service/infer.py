"""The v2 inference route's conversions (:mod:`service.v2` is the wire format): a v2
request's problems as :data:`~service.schema.SolveRequest` objects, validated as any
request is, and the answers as v2 output tensors."""

import json
from typing import Any

import numpy as np
from fastapi import HTTPException
from pydantic import ValidationError

from service.edge import SOLVE_REQUEST
from service.schema import MAX_N_BINARY, EncodedArray, SolveRequest


def solve_request(item: dict, ref: str | None, wire: np.dtype, index: int) -> SolveRequest:
    """One problem of a v2 request as a validated SolveRequest: the arrays go in decoded
    (no base64 round trip), and are checked as any request's are (422s as /solve's).
    ``ref`` None: no model named (routed as /solve's)."""

    def preset(a: np.ndarray) -> EncodedArray:
        encoded = EncodedArray.model_construct(
            dtype="float32" if wire == np.float32 else "float64", shape=a.shape, data=""
        )
        encoded._array = a
        encoded._max_n = MAX_N_BINARY
        return encoded

    coefficients = {
        k: preset(v) if isinstance(v, np.ndarray) else v for k, v in item["coefficients"].items()
    }
    body = {k: v for k, v in item.items() if k not in ("source", "coefficients")}
    body |= {"source": preset(item["source"]), "coefficients": coefficients, "model": ref}
    try:
        return SOLVE_REQUEST.validate_python(body)
    except ValidationError as e:
        detail = [
            {"loc": ["body", "inputs", index, *map(str, err["loc"])], "msg": err["msg"]}
            for err in e.errors(include_url=False, include_input=False)
        ]
        raise HTTPException(status_code=422, detail=detail) from None


def outputs(answers: list, wire: np.dtype, single: bool) -> dict[str, Any]:
    """The answers as v2 output tensors (see service/v2.py)."""

    def shaped(arrays: list[np.ndarray]) -> np.ndarray:
        stacked = np.stack(arrays).astype(wire)
        return stacked[0] if single else stacked

    out: dict[str, Any] = {"solution": shaped([a.solution for _, a, _ in answers])}
    nan = float("nan")
    out["error_estimate"] = np.array(
        [nan if a.estimate is None else a.estimate for _, a, _ in answers]
    )
    if any(a.validated for _, a, _ in answers):
        out["exact_solution"] = shaped([a.exact.solution for _, a, _ in answers])
        out["relative_l2"] = np.array(
            [nan if a.validation_error is None else a.validation_error for _, a, _ in answers]
        )
    out["mode"] = [a.mode for _, a, _ in answers]
    out["reason"] = [a.reason or "" for _, a, _ in answers]
    out["model"] = [p.card.ref if a.uses_model else "" for p, a, _ in answers]
    if any(p.routed for p, _, _ in answers):
        out["routed"] = [p.routed if a.uses_model and p.routed else "" for p, a, _ in answers]
    out["solver"] = [
        "" if a.exact is None else a.exact.report(a.refined).model_dump_json()
        for _, a, _ in answers
    ]
    out["warnings"] = [json.dumps(p.warnings) for p, _, _ in answers]
    out["timings_ms"] = [json.dumps(t) for _, _, t in answers]
    return out
