"""RFC 9457 problem details, and the one place where errors become HTTP statuses."""

from __future__ import annotations

import math
import time
from typing import Any

import falcon
import msgspec

from analytics.application.ingest import BatchTooLarge
from analytics.domain.errors import (
    AdapterError,
    BadQuery,
    BatchOverBurst,
    CacheUnavailable,
    Forbidden,
    KeyStoreUnavailable,
    MalformedInput,
    NotFound,
    NotificationFailed,
    Overloaded,
    QueueUnavailable,
    RateLimited,
    StorageUnavailable,
    Unauthenticated,
    ValidationFailed,
)
from analytics.entrypoints.api.middleware import allow_with_head

PROBLEM_JSON = "application/problem+json"
_encode = msgspec.json.Encoder().encode


class Problem(falcon.HTTPError):
    """An HTTPError rendered as problem+json, with optional extension members."""

    def __init__(
        self,
        status: str | int,
        *,
        slug: str,
        title: str,
        detail: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(status, title=title, description=detail, headers=headers)
        self.slug = slug
        self.extensions = extensions


def serialize_problem(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    """Falcon error serializer: every error body is problem+json with the correlation id."""
    resp.data = problem_document(exc, req.path, getattr(req.context, "correlation_id", None))
    resp.content_type = PROBLEM_JSON


def problem_document(exc: falcon.HTTPError, instance: str, correlation_id: str | None) -> bytes:
    body: dict[str, Any] = {
        "type": f"urn:problem:analytics:{getattr(exc, 'slug', _slug(exc))}",
        "title": exc.title or exc.status,
        "status": exc.status_code,
    }
    detail = exc.description or _default_detail(exc)
    if detail:
        body["detail"] = detail
    body["instance"] = instance
    body["correlation_id"] = correlation_id
    body.update(getattr(exc, "extensions", {}))
    return _encode(body)


def _default_detail(exc: falcon.HTTPError) -> str | None:
    """Falcon's own 404 and 405 carry no description; every problem says what to do."""
    if exc.status_code == 404:
        return "no such route; every route is listed in /api/v1/openapi.json"
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow")
        if not allowed:
            return "method not allowed on this route"
        return f"this route answers {allow_with_head(allowed)}"  # as its Allow header says
    return None


def unavailable_problem(ex: AdapterError) -> Problem:
    """503 for a dependency that failed, with the wait it knows (an open breaker's cool-down).

    The client reads the error's ``public`` words, or which kind of dependency failed; the
    error itself (a library's words: addresses, socket paths) goes to the log, since a
    key store that is down answers before the caller's key is known.
    """
    retry = getattr(ex, "retry_after", 5)
    _log_outage(ex)
    return Problem(
        503, slug="unavailable", title="Service unavailable", detail=ex.public or _kind_down(ex),
        headers={"Retry-After": str(retry)},
    )  # fmt: skip


def _log_outage(ex: AdapterError, every_s: float = 10.0) -> None:
    """``dependency unavailable`` with the error, at most once per ``every_s`` per kind of
    error (an outage answers every request with a 503: thousands a second), saying how
    many were not logged since (each request still has its access-log line)."""
    import structlog  # noqa: PLC0415

    kind = type(ex).__name__
    now = time.monotonic()
    last, quiet = _OUTAGE_LOGGED.get(kind, (-math.inf, 0))
    if now - last < every_s:
        _OUTAGE_LOGGED[kind] = (last, quiet + 1)  # a lost increment under a race is harmless
        return
    _OUTAGE_LOGGED[kind] = (now, 0)
    structlog.get_logger("analytics.api").warning(
        "dependency unavailable", error_type=kind, error=str(ex), not_logged_since=quiet)  # fmt: skip


_OUTAGE_LOGGED: dict[str, tuple[float, int]] = {}


def _kind_down(ex: AdapterError) -> str:
    for kind, what in _KINDS:
        if isinstance(ex, kind):
            return f"{what} is unavailable; retry later"
    return "a dependency is unavailable; retry later"


_KINDS = (
    (QueueUnavailable, "the broker"),
    (KeyStoreUnavailable, "the API key store"),  # before storage: it is a kind of it
    (StorageUnavailable, "storage"),
    (CacheUnavailable, "the cache"),
    (NotificationFailed, "the notifier"),
)


def internal_problem(ex: BaseException, path: str) -> Problem:
    """500 for what no handler knows; the traceback goes to the log, not to the client."""
    import structlog  # noqa: PLC0415

    structlog.get_logger("analytics.api").exception("unhandled error", path=path, exc_info=ex)
    return Problem(500, slug="internal", title="Internal error", detail="see server logs")


def _slug(exc: falcon.HTTPError) -> str:
    return (exc.title or "error").lower().replace(" ", "-")


def install_error_handlers(app: falcon.App) -> None:
    app.set_error_serializer(serialize_problem)

    def validation(req: falcon.Request, resp: falcon.Response, ex: ValidationFailed, params: Any) -> None:
        req.context.rejected_errors = ex.errors  # counted by the request metrics
        if isinstance(ex, BatchTooLarge):
            raise Problem(
                413, slug="batch-too-large", title="Batch too large",
                detail=str(ex), limit=ex.limit, count=ex.count,
            )  # fmt: skip
        raise Problem(
            422,
            slug="validation",
            title="Validation failed",
            detail=f"{len(ex.errors)} field(s) failed validation",
            errors=[e.as_dict() for e in ex.errors],
        )

    def malformed(req: falcon.Request, resp: falcon.Response, ex: MalformedInput, params: Any) -> None:
        req.context.rejected_errors = [{"rule": "json"}]  # counted by the request metrics
        raise Problem(400, slug="malformed", title="Malformed body", detail=str(ex))

    def bad_query(req: falcon.Request, resp: falcon.Response, ex: BadQuery, params: Any) -> None:
        raise Problem(
            400, slug="bad-query", title="Invalid query parameter", detail=str(ex),
            parameter=ex.parameter,
        )  # fmt: skip

    def not_found(req: falcon.Request, resp: falcon.Response, ex: NotFound, params: Any) -> None:
        raise Problem(404, slug="not-found", title="Not found", detail=str(ex))

    def unavailable(req: falcon.Request, resp: falcon.Response, ex: AdapterError, params: Any) -> None:
        raise unavailable_problem(ex)

    def unexpected(req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any) -> None:
        if isinstance(ex, falcon.HTTPError):
            raise ex
        raise internal_problem(ex, req.path)

    def unauthenticated(req: falcon.Request, resp: falcon.Response, ex: Unauthenticated, params: Any) -> None:
        raise Problem(
            401, slug="unauthenticated", title="Unauthenticated",
            detail=f"{ex}: send Authorization: Bearer <key> or X-API-Key: <key>",
            headers={"WWW-Authenticate": 'Bearer realm="analytics"'},
        )  # fmt: skip

    def forbidden(req: falcon.Request, resp: falcon.Response, ex: Forbidden, params: Any) -> None:
        raise Problem(403, slug="forbidden", title="Forbidden", detail=str(ex), scope=ex.scope)

    def rate_limited(req: falcon.Request, resp: falcon.Response, ex: RateLimited, params: Any) -> None:
        raise Problem(
            429, slug="rate-limited", title="Too many requests", detail=str(ex),
            headers=ex.headers, retry_after=ex.retry_after,
        )  # fmt: skip

    def overloaded(req: falcon.Request, resp: falcon.Response, ex: Overloaded, params: Any) -> None:
        raise Problem(
            503, slug="overloaded", title="Service overloaded", detail=str(ex),
            headers={"Retry-After": str(ex.retry_after)}, retry_after=ex.retry_after,
        )  # fmt: skip

    # Falcon picks the most specific handler for an exception's MRO.
    app.add_error_handler(Exception, unexpected)
    app.add_error_handler(AdapterError, unavailable)
    app.add_error_handler(ValidationFailed, validation)
    app.add_error_handler(MalformedInput, malformed)
    app.add_error_handler(BadQuery, bad_query)
    app.add_error_handler(NotFound, not_found)
    app.add_error_handler(Unauthenticated, unauthenticated)
    app.add_error_handler(Forbidden, forbidden)
    app.add_error_handler(RateLimited, rate_limited)

    def over_burst(req: falcon.Request, resp: falcon.Response, ex: BatchOverBurst, params: Any) -> None:
        raise Problem(
            413, slug="batch-over-burst", title="Batch larger than the rate-limit burst",
            detail=str(ex), limit=ex.burst, count=ex.events,
        )  # fmt: skip

    app.add_error_handler(BatchOverBurst, over_burst)
    app.add_error_handler(Overloaded, overloaded)
