"""HTTP errors in one layout, FastAPI's own for validation: {"detail": [{loc, msg, type}]}."""

from typing import Any

from fastapi import HTTPException


def http_error(status: int, loc: list[Any], msg: str) -> HTTPException:
    """An HTTP error whose detail names where in the body (``loc``) and what (``msg``)."""
    return HTTPException(status, detail=[{"loc": loc, "msg": msg, "type": f"http_{status}"}])
