"""Decorator-adapters: each wraps a port's adapter in a circuit breaker, same port outside.

They are composed in ``bootstrap`` (the SQL, boto3 and Redis code knows nothing of
breakers), so a test or a new adapter gets the same protection by construction.

- :class:`GuardedProxy` (storage: ``EventRepository``, ``AggregateStore``; notifier): every
  public method runs through the breaker (storage: one for writes, one for reads); while
  it is open the call raises the breaker's error at once (``StorageCircuitOpen``: a 503 on
  reads, a deferred message in a worker).
- :class:`GuardedTaskQueue` (the broker): while open, ingest gets ``QueueCircuitOpen`` (503
  with ``Retry-After``) at once instead of waiting ``enqueue_timeout_s`` for a dead broker.
- :class:`GuardedCache` (the Redis cache): while open, reads are misses (served from
  storage) and writes are skipped; invalidation (``bump``) still raises so the worker's
  message is retried and no stale value can outlive the outage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from analytics.adapters.circuit_breaker import CircuitBreaker
from analytics.domain.errors import CircuitOpen
from analytics.domain.events import Event


class _Transparent:
    """``isinstance(guarded, InnerAdapter)`` stays true (as for ``unittest.mock`` specs):
    code and tests that check which adapter was built keep working with the decorator."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # noqa: D105
        return self.__dict__["_target"].__class__  # chains through nested decorators


class GuardedProxy(_Transparent):
    """Any adapter's public methods, through a breaker; other attributes pass through.

    ``reads``: a second breaker and the methods that go through it (those that only
    read). A database can refuse writes and still answer reads (SQLite's write lock, a
    full disk): a read's success must not close the breaker the writes go through, nor a
    failing write make reads fail fast."""

    def __init__(
        self,
        inner: object,
        breaker: CircuitBreaker,
        *,
        reads: tuple[CircuitBreaker, frozenset[str]] | None = None,
    ) -> None:
        self._target = inner
        self._inner = inner
        self._breaker = breaker
        self._reads = reads
        self._wrapped: dict[str, Callable[..., Any]] = {}

    @property
    def inner(self) -> object:
        return self._inner

    @property
    def breaker(self) -> CircuitBreaker:
        return self._breaker

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name.startswith("_") or not callable(attr):
            return attr
        wrapped = self._wrapped.get(name)
        if wrapped is None:
            breaker = self._breaker
            reads = self._reads[0] if self._reads is not None and name in self._reads[1] else None

            def wrapped(*args: Any, **kwargs: Any) -> Any:
                # A read inside a write transaction (the worker's store reads back an id
                # stored earlier) is part of that one guarded call: on the reads' breaker
                # its refusal would have counted as the write's success.
                chosen = breaker if reads is None or breaker.inside() else reads
                return chosen.call(attr, *args, **kwargs)

            wrapped.__name__ = name
            wrapped.__doc__ = getattr(attr, "__doc__", None)
            self._wrapped[name] = wrapped
        return wrapped

    def __repr__(self) -> str:
        return f"Guarded({self._inner!r}, breaker={self._breaker.name!r})"


class GuardedUnitOfWork(_Transparent):
    """UnitOfWork port: the whole transaction (its BEGIN, the repository calls inside, the
    COMMIT) is one call of the storage breaker."""

    def __init__(self, inner: Any, breaker: CircuitBreaker) -> None:
        self._target = inner
        self.inner = inner
        self.breaker = breaker

    @contextmanager
    def atomic(self) -> Iterator[object]:
        with self.breaker.guard(), self.inner.atomic() as unit:
            yield unit

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class GuardedTaskQueue(_Transparent):
    """TaskQueue port: a broken broker answers at once instead of after a timeout."""

    def __init__(self, inner: Any, breaker: CircuitBreaker) -> None:
        self._target = inner
        self.inner = inner
        self.breaker = breaker

    def enqueue_events(self, events: Sequence[Event]) -> str:
        return self.breaker.call(self.inner.enqueue_events, events)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class GuardedBacklog(_Transparent):
    """Backlog port (ingest's overload probe reads the broker's Redis): while the broker
    breaker is open the probe is skipped (depth 0, no rate), so ingest reaches the broker
    breaker's immediate 503 instead of first waiting for the probe's own timeouts."""

    def __init__(self, inner: Any, breaker: CircuitBreaker) -> None:
        self._target = inner
        self.inner = inner
        self.breaker = breaker

    def _open(self) -> bool:
        return self.breaker.retry_after() > 0

    def depth(self) -> int:
        return 0 if self._open() else int(self.inner.depth())

    def drain_rate(self) -> float | None:
        return None if self._open() else self.inner.drain_rate()  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class GuardedRateLimiter(_Transparent):
    """RateLimiter port on the broker's Redis: while the broker breaker is open it fails
    open at once (what the Redis limiter itself does on an error, minus the wait for the
    error), so an ingest request meets the broker breaker's 503 without delay."""

    def __init__(self, inner: Any, breaker: CircuitBreaker) -> None:
        self._target = inner
        self.inner = inner
        self.breaker = breaker

    def hit(self, bucket: str, cost: int, quota: Any) -> Any:
        if self.breaker.retry_after() > 0:
            from analytics.domain.ratelimit import ALLOW_ALL  # noqa: PLC0415

            return ALLOW_ALL
        return self.inner.hit(bucket, cost, quota)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class GuardedCache(_Transparent):
    """Cache port. The Redis cache swallows its own errors (reads are best effort) and
    counts them in ``errors``: a call during which that count grew is a failure here."""

    def __init__(self, inner: Any, breaker: CircuitBreaker) -> None:
        self._target = inner
        self.inner = inner
        self.breaker = breaker
        self.skipped = 0  # lookups answered as misses because the breaker was open

    # The port's counters are the inner cache's (metrics read them).
    @property
    def hits(self) -> int:
        return int(self.inner.hits)

    @property
    def misses(self) -> int:
        return int(self.inner.misses) + self.skipped

    @property
    def errors(self) -> int:
        return int(self.inner.errors)

    def _run(self, fn: Callable[[], Any]) -> Any:
        b = self.breaker
        before = self.inner.errors
        trial = b.before_call()  # nothing between it and the try: the slot is freed there
        try:
            result = fn()
        except BaseException as exc:
            if b.record(exc, trial):
                raise b.on_open(b.name, b.reset_timeout_s) from exc
            raise
        if self.inner.errors > before:
            b.record_failure("the Redis cache failed (answered as a miss)")  # the adapter swallowed it
        else:
            b.record_success()
        return result

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        try:
            return list(self._run(lambda: self.inner.get_many(keys)))
        except CircuitOpen:
            self.skipped += len(keys)
            return [None] * len(keys)

    def set_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        try:
            self._run(lambda: self.inner.set_many(items))
        except CircuitOpen:
            return

    def versions(self, scopes: Sequence[str]) -> list[int] | None:
        try:
            return self._run(lambda: self.inner.versions(scopes))  # type: ignore[no-any-return]
        except CircuitOpen:
            return None  # "cache unavailable": queries read storage

    def lookup(
        self, entries: Sequence[tuple[str, Sequence[str]]]
    ) -> list[tuple[str, bytes | None]] | None:
        try:
            return self._run(lambda: self.inner.lookup(entries))  # type: ignore[no-any-return]
        except CircuitOpen:
            self.skipped += len(entries)
            return None  # "cache unavailable": queries read storage

    def bump(self, scopes: Iterable[str]) -> None:
        # While open this raises CacheCircuitOpen (a CacheUnavailable): the worker defers
        # its message until the invalidation can land; nothing stale outlives the outage.
        names = list(scopes)
        self._run(lambda: self.inner.bump(names))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
