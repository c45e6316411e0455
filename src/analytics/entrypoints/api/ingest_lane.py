"""The single-event ingest route without Falcon's per-request machinery, same contract.

``POST /api/v1/analytics/events`` is the one route clients call once per event, so its
fixed cost per request is the service's ingest ceiling. Through Falcon that request builds
a Request and a Response, routes, and runs ten middleware hooks; measured end to end
under gunicorn (README "Performance") that machinery was a fifth of the API's CPU per
event. :class:`IngestLane` sits in front of the Falcon app as a WSGI callable and serves
the *common* request of that route itself, with the same parts the middleware uses
(correlation id, API key and scope, rate limit, overload check, request metrics, access
log, security headers) and the same use case (``validate_event`` + ``queue_event``).

Everything else goes to Falcon, unchanged: other routes and methods, a body that is not
plain ``application/json`` with a ``Content-Length`` within the limit, gzip, CORS
requests (``Origin``), and every request that would fail. The key, its scope and the
rate-limit charge come first, as in Falcon, so a caller without them costs no decoding.
A failure is *replayed* through Falcon with the body already read, so the answer is
Falcon's own, byte for byte: one before the charge (missing or wrong key, missing scope,
the rate limit refusing) as it came, since nothing had changed (a refused charge consumes
nothing, GCRA); one after it (overload, bad JSON, an invalid event) marked ``ADMITTED``
with its key and charge, which Falcon then neither looks up nor charges again. Only the
queue refusing is answered here, with the same problem document Falcon would render.
``tests/integration/test_ingest_lane.py`` sends the same requests through both and
compares status, headers and body.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

import falcon
import msgspec
import structlog

from analytics.application.api_keys import authenticate, authorize
from analytics.application.ingest import IngestDeps, queue_event, validate_event
from analytics.application.overload import check_backlog
from analytics.domain.auth import ApiKey, parse_key
from analytics.domain.errors import AdapterError
from analytics.domain.ratelimit import RateDecision
from analytics.entrypoints.api.middleware import AccessLogMiddleware, begin_request
from analytics.entrypoints.api.observability import RequestMetricsMiddleware
from analytics.entrypoints.api.problems import (
    PROBLEM_JSON,
    Problem,
    internal_problem,
    problem_document,
    unavailable_problem,
)
from analytics.entrypoints.api.resources import LANE_REJECTION, NEW_ROUTE
from analytics.entrypoints.api.security import (
    ADMITTED,
    AuthMiddleware,
    access_for,
    rate_headers,
    token_from,
)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_encode = msgspec.json.Encoder().encode


class _Replay(Exception):
    """Hand the request to Falcon: it fails, and Falcon says how."""


class IngestLane:
    """A WSGI callable: the plain single-event POST served here, the rest by ``app``."""

    def __init__(
        self,
        app: WSGIApp,
        deps: IngestDeps,
        *,
        auth: AuthMiddleware,
        security_headers: dict[str, str],
        metrics: RequestMetricsMiddleware,
        access_log: AccessLogMiddleware,
        max_body_bytes: int,
        cors: bool,
    ) -> None:
        if access_for("POST", NEW_ROUTE)[0] != "ingest":  # the policy table still rules
            raise ValueError(f"POST {NEW_ROUTE} no longer needs the ingest scope")
        self.app = app
        self.deps = deps
        self.auth = auth
        self.metrics = metrics
        self.access_log = access_log
        self.max_body_bytes = max_body_bytes
        self.cors = cors
        self.headers = list(security_headers.items())
        if cors:  # CORSMiddleware varies every answer on Origin, one without it included
            self.headers.append(("Vary", "Origin"))
        s = auth.settings
        # An address bucket behind a trusted proxy needs Falcon's Forwarded parsing.
        self.defer_all = auth.limiter is not None and not auth.enabled and s.trust_forwarded_for
        self.overload = (s.overload_queue_depth, s.overload_retry_after_max_s)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = self._length_if_mine(environ)
        if length is None:
            return self.app(environ, start_response)
        started = self.metrics.start()
        raw = environ["wsgi.input"].read(length)
        try:
            status, headers, body = self._serve(environ, raw)
        except _Replay:
            self.metrics.abandon()
            environ["wsgi.input"] = io.BytesIO(raw)  # Falcon reads the body again
            return self.app(environ, start_response)
        code = status[:3]
        self.metrics.finish(NEW_ROUTE, "POST", code, started)
        self.access_log.record("POST", NEW_ROUTE, int(code), started)
        start_response(status, headers)
        return [body]

    def _length_if_mine(self, environ: dict[str, Any]) -> int | None:
        """The body's length when this request is the lane's kind, else None (Falcon's)."""
        if (
            environ.get("PATH_INFO") != NEW_ROUTE
            or environ.get("REQUEST_METHOD") != "POST"
            or self.defer_all
            or (self.cors and "HTTP_ORIGIN" in environ)
            or environ.get("HTTP_CONTENT_ENCODING", "identity").strip().lower() != "identity"
            or "HTTP_TRANSFER_ENCODING" in environ
            or environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower() != "application/json"
        ):
            return None
        given = environ.get("CONTENT_LENGTH", "")
        length = int(given) if given.isdigit() else None
        return length if length is not None and length <= self.max_body_bytes else None

    def _serve(self, environ: dict[str, Any], raw: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
        cid = begin_request(environ.get("HTTP_X_CORRELATION_ID"))
        try:
            token = None
            if self.auth.enabled:
                token = token_from(environ.get("HTTP_AUTHORIZATION"), environ.get("HTTP_X_API_KEY"))
                if token is None or parse_key(token) is None:
                    raise _Replay  # no key to look up (Falcon: 401)
            # Who and how much before the body is decoded, in Falcon's order: a caller
            # without a valid key or the scope, or out of quota, costs no decoding (QA:
            # 1 MiB of JSON decoded for a made-up key was 0.6 s of CPU per request).
            key, bucket = self._bucket(environ, token)
            decision = self._charge(bucket)
        except Exception:  # noqa: BLE001 - nothing has happened yet: Falcon answers it
            # (key, scope, a refused charge, or a key store that is down), exactly as it
            # would have without the lane.
            raise _Replay from None
        validating = False
        try:
            if self.auth.backlog is not None:
                threshold, max_retry_s = self.overload
                check_backlog(self.auth.backlog, threshold=threshold, max_retry_s=max_retry_s)
            validating = True
            event = validate_event(raw, correlation_id=cid, deps=self.deps)
        except Exception as exc:  # noqa: BLE001 - overload, bad JSON, an invalid event:
            # Falcon answers (503, 400, 422) with this request's key and charge (no second
            # lookup or charge) and the validation's own error (no second decode: security QA).
            environ[ADMITTED] = (key, decision)
            if validating:
                environ[LANE_REJECTION] = exc
            raise _Replay from None
        headers = [("X-Correlation-ID", cid), *self.headers]
        try:
            receipt = queue_event(event, deps=self.deps)
        except AdapterError as exc:
            return self._problem(unavailable_problem(exc), cid, decision, headers)
        except Exception as exc:  # noqa: BLE001 - the 500 Falcon's last handler gives
            return self._problem(internal_problem(exc, NEW_ROUTE), cid, decision, headers)
        body = _encode(receipt)
        headers += rate_headers(decision, has_retry_after=False)
        headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        return "202 Accepted", headers, body

    def _bucket(
        self, environ: dict[str, Any], token: str | None
    ) -> tuple[ApiKey | None, tuple[str, Any] | None]:
        """Authenticate and authorize as AuthMiddleware does: the key and its rate-limit bucket."""
        auth, key = self.auth, None
        if auth.enabled:
            key = authenticate(token, store=auth.store)  # type: ignore[arg-type]
            authorize(key, "ingest")
            structlog.contextvars.bind_contextvars(api_key_id=key.key_id)
        # Falcon's remote_addr: REMOTE_ADDR, or 127.0.0.1 when the server gives none.
        return key, auth.rate_bucket(key, lambda: environ.get("REMOTE_ADDR", "127.0.0.1"), NEW_ROUTE)

    def _charge(self, bucket: tuple[str, Any] | None) -> RateDecision | None:
        limiter = self.auth.limiter
        if bucket is None or limiter is None:
            return None
        decision = limiter.hit(bucket[0], 1, bucket[1])
        if not decision.allowed:  # a refused charge consumed nothing: Falcon charges again
            raise _Replay
        return decision

    def _problem(
        self, problem: Problem, cid: str, decision: RateDecision | None, headers: list[tuple[str, str]]
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        body = problem_document(problem, NEW_ROUTE, cid)
        own = list((problem.headers or {}).items())
        headers = own + headers + rate_headers(decision, has_retry_after="Retry-After" in dict(own))
        headers += [("Content-Type", PROBLEM_JSON), ("Content-Length", str(len(body))),
                    ("Cache-Control", "no-store")]  # fmt: skip
        return falcon.code_to_http_status(problem.status_code), headers, body
