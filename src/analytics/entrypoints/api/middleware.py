"""Falcon middleware: correlation ids, security headers, one log line per request."""

from __future__ import annotations

import logging
import re
import time

import falcon
import structlog

from analytics.domain.ids import random_hex

_VALID_CORRELATION_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    # The seed's "XSS-Protection", as OWASP advises it now: 0 turns off the auditor of old
    # browsers (itself a way to leak data); the CSP above is the protection.
    "X-XSS-Protection": "0",
}


def begin_request(given: str | None) -> str:
    """The request's correlation id (``given`` when well-formed, else a new one), bound
    to every log line of this request and nothing of an earlier one."""
    structlog.contextvars.clear_contextvars()
    # A new id is 128 random bits in hex, like ``uuid4().hex`` without building a UUID.
    cid = given if given and _VALID_CORRELATION_ID.fullmatch(given) else random_hex(16)
    structlog.contextvars.bind_contextvars(correlation_id=cid)
    return cid


class DrainUnreadBodyMiddleware:
    """Reads what an answer left unread of the request body, up to ``max_bytes``.

    A request refused before its body is read (401, 403, 415, 429, 404, 405, a 413 for a
    body over the limit...) leaves the body on the socket. gunicorn then discards at most
    64 KiB of it and closes a connection it has just answered as keep-alive, so a client's
    next request on that pooled connection fails (a POST is not retried), and a client
    still sending meets a reset instead of the answer. Reading the rest here keeps the
    connection usable. ``max_bytes`` is the largest body worth reading only to drop it
    (the decompressed-size cap, 8 MiB by default): past it gunicorn closes the connection
    after the answer, as any server must that will not read what it is sent.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        try:
            length = req.content_length
            if length is not None:
                if 0 < length <= self.max_bytes:
                    req.bounded_stream.exhaust()
            elif "chunked" in (req.get_header("Transfer-Encoding") or "").lower():
                left = self.max_bytes + 1  # what body.py reads of a chunked body at most
                while left > 0 and (chunk := req.stream.read(min(left, 64 * 1024))):
                    left -= len(chunk)
        except Exception:  # noqa: BLE001, S110 - a bad length or the client gone: the
            pass  # answer stands, and gunicorn closes what it cannot reuse


class HeadAsGetMiddleware:
    """``HEAD`` on every ``GET`` route (RFC 9110 9.3.2: a server MUST support HEAD where
    it supports GET): routed as ``GET``, answered without the body, with the headers and
    ``Content-Length`` the ``GET`` would have. Falcon answers 405 for a resource without
    ``on_head``. The method is ``HEAD`` again before any other middleware's resource and
    response hooks and the responder run, so the access policy (its ``GET HEAD`` rules),
    the access log and Falcon's body suppression all see the request as it came."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.method == "HEAD":
            req.context.head_as_get = True
            req.method = "GET"  # routing only

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: object, params: dict[str, object]
    ) -> None:
        if getattr(req.context, "head_as_get", False):
            req.method = "HEAD"

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        if getattr(req.context, "head_as_get", False):  # a 404 or 405 never reached a resource
            req.method = "HEAD"
        allow = resp.get_header("Allow")  # an OPTIONS or 405 answer: HEAD is answered too
        if allow:
            resp.set_header("Allow", allow_with_head(allow))


def allow_with_head(allow: str) -> str:
    """Falcon's ``Allow`` list with ``HEAD`` after ``GET`` (this middleware answers it)."""
    methods = [m.strip() for m in allow.split(",")]
    if "GET" in methods and "HEAD" not in methods:
        methods.insert(methods.index("GET") + 1, "HEAD")
    return ", ".join(methods)


class CorrelationMiddleware:
    """Take ``X-Correlation-ID`` when it is well-formed, else make one; echo it always."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.correlation_id = begin_request(req.get_header("X-Correlation-ID"))
        req.context.started = time.perf_counter()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        cid = getattr(req.context, "correlation_id", None)
        if cid:
            resp.set_header("X-Correlation-ID", cid)


LEGACY_ROUTE = "/analytics/events"
#: The seed's old route is deprecated (RFC 9745) in favour of its successor (RFC 8288).
LEGACY_HEADERS = {
    "Deprecation": "true",
    "Link": '</api/v1/analytics/events>; rel="successor-version"',
}


def security_headers(hsts_seconds: int = 0) -> dict[str, str]:
    """The headers every answer carries: :data:`SECURITY_HEADERS`, and HSTS when set."""
    headers = dict(SECURITY_HEADERS)
    if hsts_seconds:
        headers["Strict-Transport-Security"] = f"max-age={hsts_seconds}; includeSubDomains"
    return headers


class SecurityHeadersMiddleware:
    """The security headers on every response, errors and 404s included.

    A resource may relax the CSP for its own page by setting ``resp.context.csp`` (the
    docs page needs its own scripts and styles: ``'self'``, never inline or a CDN).
    """

    def __init__(self, hsts_seconds: int = 0) -> None:
        self.headers = security_headers(hsts_seconds)

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        resp.set_headers(self.headers)
        if req.path.rstrip("/") == LEGACY_ROUTE:  # every answer of it, 401 and 405 too
            resp.set_headers(LEGACY_HEADERS)
        csp = resp.context.get("csp") if hasattr(resp.context, "get") else None
        if csp:
            resp.set_header("Content-Security-Policy", csp)


class AccessLogMiddleware:
    """One JSON line per request: route template, status, duration, correlation id."""

    def __init__(self) -> None:
        self.log = structlog.get_logger("analytics.access")

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        self.record(
            req.method,
            req.uri_template or "unmatched",
            resp.status_code if hasattr(resp, "status_code") else resp.status,
            getattr(req.context, "started", None),
        )

    def record(self, method: str, route: str, status: object, started: float | None) -> None:
        # A 5xx is the service's failure, not the client's: WARNING, so it shows at the
        # WARNING level too and a log alert can tell it from ordinary traffic.
        failed = type(status) is int and status >= 500
        if failed or self.log.is_enabled_for(logging.INFO):  # e.g. silent at WARNING
            duration_ms = round((time.perf_counter() - started) * 1000, 3) if started else None
            (self.log.warning if failed else self.log.info)(
                "request", method=method, route=route, status=status, duration_ms=duration_ms
            )
        # The request is over: gunicorn's own lines on this thread until the next one (a
        # request it refuses before the app) carried this one's correlation id and key.
        structlog.contextvars.clear_contextvars()
