"""HTTP caching of GET responses: strong ``ETag``, ``Cache-Control`` by kind, 304s.

What each kind of response gets (README, "Resilience"; max-ages are settings):

| kind | routes | Cache-Control |
|---|---|---|
| ``closed`` | aggregation buckets of periods that have ended | ``public, max-age=<closed>`` only if no key is needed or ``http_cache_public`` is on; else ``private, max-age=<closed>`` |
| ``open`` | aggregations that include the current period | ``private`` (or ``public`` without keys), ``max-age=<open>`` |
| ``dashboard`` | dashboard metrics | as ``open`` with ``max-age=<dashboard>`` |
| ``private`` | event search (carries user data) | ``private, no-store`` |
| ``no-store`` | task status, health, metrics | ``no-store`` |
| ``static`` | API docs, OpenAPI document | ``public, max-age=<static>`` |
| anything else | other GETs | ``no-cache`` (revalidate with the ETag) |

Resources may choose the kind per request with :func:`mark` (the aggregation resource
knows whether every bucket is closed). The ``ETag`` is a hash of the body, so it changes
exactly when the content does; a request whose ``If-None-Match`` names it (weak
comparison, RFC 9110 13.1.2) gets ``304 Not Modified`` without a body. A malformed
``If-None-Match`` is ignored: the full response is sent. Responses that need a key carry
``Vary: Authorization, X-API-Key`` so a shared cache never serves one key's answer to
another.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

import falcon

if TYPE_CHECKING:
    from analytics.settings import Settings

KINDS = ("closed", "open", "dashboard", "private", "no-store", "static", "revalidate")

#: Route templates and their default kind (a resource's :func:`mark` wins).
ROUTE_KINDS: dict[str, str] = {
    "/api/v1/analytics/aggregations/{period}": "open",
    "/api/v1/analytics/dashboard/metrics": "dashboard",
    "/api/v1/analytics/events/search": "private",
    "/api/v1/analytics/events/{event_id}": "private",
    "/api/v1/analytics/tasks/{task_id}/status": "no-store",
    "/health": "no-store",
    "/health/detailed": "no-store",
    "/metrics": "no-store",
}
STATIC_PREFIXES = ("/docs", "/openapi", "/api/v1/openapi", "/static")
KEY_HEADERS = ("Authorization", "X-API-Key")

# RFC 9110: entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE ; etagc = %x21 / %x23-7E / obs-text
_ETAG = r'(?:W/)?"[\x21\x23-\x7e\x80-\xff]*"'
_IF_NONE_MATCH = re.compile(rf"\s*(?:\*|{_ETAG}(?:\s*,\s*{_ETAG})*)\s*")
_TAGS = re.compile(_ETAG)


def mark(req: falcon.Request, kind: str) -> None:
    """Let a resource choose how its response is cached (one of :data:`KINDS`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}")
    req.context.cache_kind = kind


def strong_etag(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def parse_if_none_match(value: str | None) -> list[str] | None:
    """The opaque tags (``W/`` dropped: weak comparison), ``["*"]``, or None when the header
    is absent or malformed (then it is ignored, as if absent)."""
    if value is None or not _IF_NONE_MATCH.fullmatch(value):
        return None
    if value.strip() == "*":
        return ["*"]
    return [t.removeprefix("W/") for t in _TAGS.findall(value)]


class HttpCacheMiddleware:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Security's setting (``auth``): when keys are off nothing needs one.
        self.keyed = getattr(settings, "auth", "required") != "disabled"

    def kind(self, req: falcon.Request) -> str:
        chosen = getattr(req.context, "cache_kind", None)
        if chosen:
            return str(chosen)
        template = req.uri_template or ""
        if template in ROUTE_KINDS:
            return ROUTE_KINDS[template]
        if req.path.startswith(STATIC_PREFIXES):
            return "static"
        return "revalidate"

    def cache_control(self, kind: str) -> str:
        s = self.settings
        shared = "private" if self.keyed else "public"
        if kind == "closed":
            scope = "public" if (s.http_cache_public or not self.keyed) else "private"
            return f"{scope}, max-age={s.http_cache_closed_max_age_s}"
        if kind == "open":
            return f"{shared}, max-age={s.http_cache_open_max_age_s}"
        if kind == "dashboard":
            return f"{shared}, max-age={s.http_cache_dashboard_max_age_s}"
        if kind == "private":
            return "private, no-store"
        if kind == "no-store":
            return "no-store"
        if kind == "static":
            return f"public, max-age={s.http_cache_static_max_age_s}"
        return "no-cache"

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        if req.method not in ("GET", "HEAD"):
            if resp.status_code >= 400 and not resp.get_header("Cache-Control"):
                resp.set_header("Cache-Control", "no-store")  # an error of any method
            return
        if not req_succeeded or resp.status_code != 200:
            if not resp.get_header("Cache-Control"):
                resp.set_header("Cache-Control", "no-store")  # never cache an error
            return
        kind = self.kind(req)
        resp.set_header("Cache-Control", self.cache_control(kind))
        if kind in ("private", "no-store"):
            return
        if self.keyed and kind != "static" and req.path.startswith("/api/"):
            vary = resp.get_header("Vary")
            names = [v.strip() for v in vary.split(",")] if vary else []
            names += [h for h in KEY_HEADERS if h not in names]
            resp.set_header("Vary", ", ".join(names))
        etag = resp.get_header("ETag")
        if etag is None:
            body = resp.render_body()
            if body is None:
                return
            etag = strong_etag(body)
            resp.set_header("ETag", etag)
        tags = parse_if_none_match(req.get_header("If-None-Match"))
        if tags and ("*" in tags or etag.removeprefix("W/") in tags):
            resp.status = falcon.HTTP_304
            resp.data = None
            resp.text = None
            resp.content_type = None
