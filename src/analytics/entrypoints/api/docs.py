"""``/api/v1/openapi.json`` and the ``/docs`` page, served from files shipped in the package."""

from __future__ import annotations

from importlib import resources as importlib_resources
from typing import Any

import falcon
import msgspec

# The docs page runs the vendored Swagger UI: scripts, styles, images and fetches from this
# origin only; no inline script, no CDN, no framing.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'"
)
STATIC_TYPES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "docs.js": "text/javascript; charset=utf-8",
}


def _static(name: str) -> bytes:
    root = importlib_resources.files("analytics.entrypoints.api") / "static"
    candidates = [root / name, root / "swagger-ui" / name]
    for path in candidates:
        if path.is_file():
            return path.read_bytes()
    raise FileNotFoundError(name)


class OpenAPIResource:
    """The document is built once, on first request, from the finished app's router."""

    def __init__(self, build: Any) -> None:
        self._build = build
        self._body: bytes | None = None

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self._body is None:
            self._body = msgspec.json.encode(self._build())
        resp.content_type = "application/json"
        resp.data = self._body


class DocsPageResource:
    def __init__(self) -> None:
        self._page = _static("docs.html")

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "text/html; charset=utf-8"
        resp.context.csp = DOCS_CSP
        resp.data = self._page


class DocsStaticResource:
    def __init__(self) -> None:
        self._cache: dict[str, bytes] = {}

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        if name not in STATIC_TYPES:
            raise falcon.HTTPNotFound(title="Not found", description=f"no asset {name!r}")
        if name not in self._cache:
            self._cache[name] = _static(name)
        resp.content_type = STATIC_TYPES[name]
        resp.cache_control = ["public", "max-age=3600"]
        resp.context.csp = DOCS_CSP
        resp.data = self._cache[name]
