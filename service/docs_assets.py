"""``/docs`` without the internet: Swagger UI's script, styles and icon served by the service
itself, not from FastAPI's default CDN (the page was blank on a machine that cannot reach
it). The files come from the ``fastapi-offline`` package (Swagger UI 5; only its files are
used): ``swagger-ui-bundle`` ships Swagger UI 4.15, which renders OpenAPI 3.0 only and
answers FastAPI's 3.1 document with "Unable to render this definition". ``/redoc`` is off:
ReDoc's bundle loads its logo from a CDN.

The page names its files and the OpenAPI document by URLs relative to itself
(``docs/static/...``, ``openapi.json``): under a route prefix (``/p/docs``, an
application beside others on a cluster's proxy, or behind a proxy that strips a prefix)
the browser resolves them under the same prefix."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from service.errors import http_error

DOCS = "/docs"
STATIC = f"{DOCS}/static"
#: The files the page loads, and their content types.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}
#: The documentation's routes, open without an API key (``service.edge.OPEN_ROUTES``).
DOCS_ROUTES = {DOCS, "/openapi.json"} | {f"{STATIC}/{name}" for name in ASSETS}
#: The files change only with the package's version; a browser keeps them a day.
CACHE = {"Cache-Control": "public, max-age=86400"}


def add_docs(api: FastAPI) -> None:
    """Swagger UI at ``/docs`` and its files under ``/docs/static``; ``api`` is made with
    ``docs_url=None, redoc_url=None`` (FastAPI's own page would load them from a CDN)."""

    @api.get(DOCS, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        # relative to the page at .../docs: .../openapi.json and .../docs/static/...
        static = STATIC.lstrip("/")
        return get_swagger_ui_html(
            openapi_url=api.openapi_url.lstrip("/"),
            title=f"{api.title} - Swagger UI",
            swagger_js_url=f"{static}/swagger-ui-bundle.js",
            swagger_css_url=f"{static}/swagger-ui.css",
            swagger_favicon_url=f"{static}/favicon.png",
            oauth2_redirect_url=None,  # API keys, no OAuth2 flow to return to
            # no badge that sends the document to validator.swagger.io
            swagger_ui_parameters={"validatorUrl": None},
        )

    @api.get(STATIC + "/{name}", include_in_schema=False)
    async def swagger_ui_file(name: str) -> FileResponse:
        folder = _bundle()
        if name not in ASSETS:
            raise http_error(404, ["path", "name"], "no such file")
        if folder is None:
            msg = "Swagger UI's files are not installed: pip install fastapi-offline"
            raise http_error(404, ["path", "name"], msg)
        return FileResponse(folder / name, media_type=ASSETS[name], headers=CACHE)


def _bundle() -> Path | None:
    """The folder of Swagger UI's files, None without the package (a server's path is never
    shown: the caller answers 404)."""
    spec = importlib.util.find_spec("fastapi_offline")  # its files, not its code
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "static"
