"""One error root with two branches: domain errors and adapter errors.

HTTP status codes are chosen in one place (the API's error handlers), never here.
"""

from __future__ import annotations

from dataclasses import dataclass


class AnalyticsError(Exception):
    """Root of every error this service raises on purpose."""


class DomainError(AnalyticsError):
    """A business rule was broken by the input. Never worth a retry."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One failing field: where (a JSON-pointer-like path), which rule, and why."""

    field: str
    rule: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "rule": self.rule, "message": self.message}


class ValidationFailed(DomainError):
    """One or more fields broke their rules; carries every failure, not just the first."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))


class MalformedInput(DomainError):
    """The body is not parseable at all (not JSON, wrong top-level shape)."""


class BadQuery(DomainError):
    """A query parameter is invalid (bad date, inverted range, unknown period...)."""

    def __init__(self, parameter: str, message: str) -> None:
        self.parameter = parameter
        super().__init__(f"{parameter}: {message}")


class NotFound(DomainError):
    """The named resource does not exist."""


class PermanentError(DomainError):
    """A task that can never succeed, whatever the retries (e.g. its payload does not decode).

    Actors declare it in ``throws``: the message skips its retries and goes straight to the
    dead-letter queue, where an operator can inspect it.
    """


class DeadLetterNotFound(NotFound):
    """No dead-lettered message has that id."""


class AdapterError(AnalyticsError):
    """Infrastructure failed (storage, broker, cache, notifier). Usually worth a retry.

    The message is for the log: it may carry a library's own words (a host and port, a
    socket path). ``public`` is what a client may read in a 503, written by us for it;
    without one the API says only which kind of dependency failed.
    """

    def __init__(self, message: str = "", *, public: str | None = None) -> None:
        super().__init__(message)
        self.public = public


class StorageUnavailable(AdapterError):
    """The event store or aggregate store cannot be reached right now."""


class KeyStoreUnavailable(StorageUnavailable):
    """The API key store cannot be reached (in Redis, it is down with Redis): a 503 that
    names it, not "storage" (QA: /health/detailed said storage while SQLite was fine)."""


class CacheUnavailable(AdapterError):
    """The cache could not be invalidated; the caller retries (reads never raise this)."""


class QueueUnavailable(AdapterError):
    """The broker cannot accept messages right now; ingest answers 503."""

    def __init__(self, message: str, retry_after: int = 5, *, public: str | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message, public=public)


class NotificationFailed(AdapterError):
    """The notifier did not take every message; the actor retries, then dead-letters."""


class Unauthenticated(DomainError):
    """No API key, or one that is unknown, malformed or revoked (HTTP 401)."""


class Forbidden(DomainError):
    """The key is valid but lacks the scope the route needs (HTTP 403)."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        super().__init__(f"this key lacks the {scope!r} scope")


class RateLimited(DomainError):
    """Too many requests (or events) for this key or address in the current window (429)."""

    def __init__(self, message: str, retry_after: int, headers: dict[str, str]) -> None:
        self.retry_after = retry_after
        self.headers = headers
        super().__init__(message)


class BatchOverBurst(DomainError):
    """A batch of more events than its rate-limit bucket can ever hold (its burst): no
    wait makes room, so it is refused as too large (413), not rate limited (429)."""

    def __init__(self, events: int, burst: int) -> None:
        self.events, self.burst = events, burst
        super().__init__(
            f"a batch of {events} events is more than this key's rate-limit burst of {burst}:"
            f" send at most {burst} events per request"
        )


class Overloaded(AdapterError):
    """The processing backlog is too deep to accept more events now (503, not a timeout)."""

    def __init__(self, message: str, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(message, public=message)  # our own words: backlog and wait


class CircuitOpen(AdapterError):
    """A circuit breaker is open: the dependency failed repeatedly and is not called now.

    ``retry_after`` is the number of seconds until the breaker lets a trial call through.
    """

    def __init__(self, breaker: str, retry_after: float) -> None:
        seconds = max(1, int(-(-max(0.0, retry_after) // 1)))  # whole seconds, rounded up
        message = f"circuit breaker {breaker!r} is open (retry in {seconds} s)"
        super().__init__(message, public=message)
        self.breaker = breaker
        self.retry_after_s = max(0.0, retry_after)
        self.retry_after = seconds


class StorageCircuitOpen(CircuitOpen, StorageUnavailable):
    """The storage breaker is open: workers defer their message, reads answer 503 at once."""


class CacheCircuitOpen(CircuitOpen, CacheUnavailable):
    """The cache breaker is open: reads go to storage; an invalidation defers its message."""


class QueueCircuitOpen(CircuitOpen, QueueUnavailable):
    """The broker breaker is open: ingest answers 503 with ``Retry-After`` at once."""
