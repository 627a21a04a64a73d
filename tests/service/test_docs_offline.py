"""/docs works on a machine without the internet: the page names no other host, the
service serves every file it loads (no API key asked), and under a route prefix the
page's URLs resolve under the prefix."""

import json
import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from service_helpers import API_KEY

#: What each kind of file the page loads must be: content type, and a size it exceeds.
KINDS = {"script": ("javascript", 100_000), "stylesheet": ("text/css", 10_000)}
KINDS["icon"] = ("image/", 100)


class _Refs(HTMLParser):
    """The page's <script src>, stylesheet and icon <link href>, by kind."""

    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.refs.append(("script", a["src"]))
        elif tag == "link" and a.get("href"):
            rel = (a.get("rel") or "").split()
            kind = "stylesheet" if "stylesheet" in rel else "icon" if "icon" in rel else "other"
            self.refs.append((kind, a["href"]))


def _check_page(get, page_url: str) -> dict:
    """Fetch the docs page at ``page_url`` with ``get`` (no API key) and every file it
    names; the OpenAPI document it loads."""
    page = get(page_url)
    assert page.status_code == 200, page.text[:300]
    assert page.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://", page.text), "the page names a host"
    parser = _Refs()
    parser.feed(page.text)
    assert {kind for kind, _ in parser.refs} == set(KINDS), parser.refs
    here = urlsplit(page_url)
    prefix = here.path.rsplit("/", 1)[0] + "/"  # the route prefix, if any, and "/"

    def resolved(ref: str) -> str:
        url = urljoin(page_url, ref)
        assert urlsplit(url)[:2] == here[:2], f"{ref} is on another host"
        assert urlsplit(url).path.startswith(prefix), f"{ref} is outside {prefix}"
        return url

    for kind, ref in parser.refs:
        url = resolved(ref)
        answer = get(url)
        content_type, size = KINDS[kind]
        assert answer.status_code == 200, (url, answer.text[:300])
        assert content_type in answer.headers["content-type"], (url, answer.headers)
        assert len(answer.content) > size, url
    (spec,) = re.findall(r"url: '([^']+)'", page.text)
    openapi = get(resolved(spec))
    assert openapi.status_code == 200, openapi.text[:300]
    return openapi.json()


def test_docs_load_from_the_service_alone(service):
    """The running service (API keys on): every file from it, none asked for a key."""
    with httpx.Client(timeout=60) as client:
        document = _check_page(client.get, f"{service}/docs")
        assert "/solve" in document["paths"] and "/metrics" in document["paths"]
        assert client.get(f"{service}/redoc").status_code in (401, 404)
        # the key still guards the rest
        assert client.get(f"{service}/models").status_code == 401
        assert client.get(f"{service}/models", headers={"X-API-Key": API_KEY}).status_code == 200


@pytest.fixture
def keys_on():
    """The edge's API keys on, for the app run in this process (TestClient)."""
    from service import settings

    saved = settings._ACTIVE[:], dict(settings._DIRECT)
    settings.activate(settings.ServiceSettings(api_keys=[API_KEY]))
    try:
        yield
    finally:
        settings._ACTIVE[:], settings._DIRECT = saved


def test_docs_under_a_route_prefix_and_a_swagger_ui_for_openapi_3_1(keys_on):
    """Under a route prefix (an application beside others on a cluster's proxy) the
    page's files and document resolve under the prefix, still without a key. The Swagger
    UI served renders the service's OpenAPI 3.1 (Swagger UI 4 renders 3.0 only: the page
    said "Unable to render this definition")."""
    from fastapi.testclient import TestClient

    from service.edge import api

    with TestClient(api, root_path="/p") as client:
        document = _check_page(client.get, "http://testserver/p/docs")
        assert client.get("/p/models").status_code == 401
        assert client.get("/p/redoc").status_code == 401  # no route: not an open one
        bundle = client.get("/p/docs/static/swagger-ui-bundle.js").text
    (version,) = set(re.findall(r'PACKAGE_VERSION:"(\d+)\.\d+\.\d+"', bundle))
    assert document["openapi"].startswith("3.1") and int(version) >= 5, version


def test_only_the_pages_files_are_served():
    from fastapi.testclient import TestClient

    from service.edge import api

    with TestClient(api) as client:
        for name in ("index.html", "..%2F..%2Fpyproject.toml", "redoc.standalone.js"):
            r = client.get(f"/docs/static/{name}")
            assert r.status_code == 404 and "/" not in json.dumps(r.json()["detail"]), r.text
