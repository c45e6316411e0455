"""Ports: what the application needs from the outside world, as Protocols.

Adapters satisfy them structurally (no inheritance); fakes in ``adapters.memory`` satisfy
the same contracts and run the same contract tests.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from analytics.domain.aggregation import Breakdown, Contribution, CounterKey, Summary
from analytics.domain.auth import ApiKey
from analytics.domain.buckets import Piece
from analytics.domain.events import Event
from analytics.domain.operations import DeadLetter
from analytics.domain.ratelimit import Quota, RateDecision
from analytics.domain.search import EventQuery, SearchKey
from analytics.domain.tasks import TaskStatus, TaskUpdate


class Clock(Protocol):
    def now(self) -> datetime:
        """Current time, timezone-aware UTC."""
        ...


class IdGenerator(Protocol):
    def __call__(self) -> uuid.UUID: ...


class EventRepository(Protocol):
    """Raw events, stored once per ``event_id``."""

    def add_many(self, events: Sequence[Event]) -> list[uuid.UUID]:
        """Store events idempotently; return the ids that were new (in input order)."""
        ...

    def get_many(self, event_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Event]:
        """Fetch stored events by id; missing ids are absent from the result."""
        ...

    def count(self) -> int:
        """Number of stored events (for health and tests; may be approximate on big stores)."""
        ...

    def purge_before(self, cutoff: datetime) -> int:
        """Retention: delete raw events whose ``timestamp`` is before ``cutoff``; return how many.

        Aggregates are not touched. A store that expires items itself (DynamoDB TTL) may
        return 0.
        """
        ...

    def iter_range(
        self, start: datetime, end: datetime, *, page_size: int = 1000
    ) -> Iterator[Event]:
        """Events with ``start <= timestamp < end`` in (timestamp, event_id) order, read
        page by page from a time index (never a full scan)."""
        ...

    def search(self, query: EventQuery, *, after: SearchKey | None, limit: int) -> list[Event]:
        """Up to ``limit`` events matching every filter of ``query`` (time range half-open,
        ``start <= timestamp < end``), in ascending ``(timestamp, event_id)`` order (see
        :func:`analytics.domain.search.sort_key`), strictly after ``after`` when given.

        Must be served from an index per filter (never a scan of all events); when several
        filters are given, an adapter may use one index and check the others per row.
        (SQLite: an index ``(col, ts_us, event_id)`` per filter; DynamoDB: a GSI per filter
        with a sort key that orders like ``(ts_us, event_id)``, e.g. a zero-padded
        ``ts_us#event_id``, with ``Query`` pages resumed from the ``after`` key.)
        """
        ...


class TaskQueue(Protocol):
    """Hands validated events to background processing."""

    def enqueue_events(self, events: Sequence[Event]) -> str:
        """Return a task id once the events are durably queued; raise QueueUnavailable."""
        ...


class Notifier(Protocol):
    """Publishes stored events to subscribers (SNS in production)."""

    def publish(self, events: Sequence[Event]) -> None:
        """Publish one notification per event; raise an AdapterError if any was not taken."""

class DeadLetters(Protocol):
    """The dead-letter queues: messages that failed for good, to inspect, replay or purge."""

    def list(self, *, queue: str | None = None, actor: str | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first, optionally of one queue and/or one actor."""
        ...

    def replay(self, letter_ids: Sequence[str]) -> builtins.list[str]:
        """Put these back on their queues (fresh retry budget); return the ids replayed."""
        ...

    def purge(self, letter_ids: Sequence[str]) -> builtins.list[str]:
        """Delete these for good; return the ids deleted."""
        ...

    def depths(self) -> dict[str, int]:
        """Dead letters per queue (every known queue, zeros included)."""
        ...

    def record_depths(self, depths: dict[str, int], at: datetime) -> None:
        """Keep the last measured depths where the metrics exporter reads them."""
        ...


# --- security (issue 7) -------------------------------------------------------------------
class ApiKeyStore(Protocol):
    """Hashed API keys by id. Revoked keys stay (so ids are never reused)."""

    def add(self, key: ApiKey) -> None: ...

    def get(self, key_id: str) -> ApiKey | None: ...

    def list(self) -> builtins.list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        ...

    def revoke(self, key_id: str, at: datetime) -> bool:
        """Mark a key revoked; False when there is no such active key."""
        ...


class RateLimiter(Protocol):
    """A shared budget per bucket (a key id or a client address)."""

    def hit(self, bucket: str, cost: int, quota: Quota) -> RateDecision:
        """Spend ``cost`` units if the budget allows; never raises (fails open)."""
        ...


class Backlog(Protocol):
    """How deep the event queue is and how fast it drains (for 503 under overload)."""

    def depth(self) -> int:
        """Messages waiting in the high_priority queue."""
        ...

    def drain_rate(self) -> float | None:
        """Messages per second recently consumed; None when not measured yet."""
        ...


# --- aggregates (see domain/aggregation.py for the counter model) -----------------------


@dataclass(slots=True)
class AggregateSnapshot:
    """Counters of both grains with bucket starts in [start, end) minutes, and the events
    whose contributions they hold, read consistently (one read transaction)."""

    counters: dict[CounterKey, int] = field(default_factory=dict)
    applied: set[uuid.UUID] = field(default_factory=set)


class AggregateStore(Protocol):
    """Incremental, exactly-once aggregate counters at the 1- and 15-minute base grains.

    ``apply`` writes a per-event applied marker in the same transaction as the event's
    increments: an ``event_id`` seen again (redelivery, client retry, crash between the
    event write and the count) changes nothing. A window is a sequence of
    :class:`Piece` (grain, [start, end) epoch minutes) from ``buckets.cover``.
    """

    def apply(self, contributions: Sequence[Contribution]) -> list[uuid.UUID]:
        """Apply each contribution unless its event was applied before; return the new ids."""
        ...

    def snapshot(self, start: int, end: int) -> AggregateSnapshot:
        """Counters and applied markers for bucket starts in [start, end) (epoch minutes,
        multiples of 15). For reconcile; reads one consistent state."""
        ...

    def correct(self, deltas: Mapping[CounterKey, int]) -> None:
        """Add corrections to counters (reconcile repair); atomic."""
        ...

    def summarize(
        self, windows: Sequence[Sequence[Piece]], event_type: str | None
    ) -> list[Summary]:
        """One summary per window: events, exact unique users/sessions, purchase revenue."""
        ...

    def breakdown(self, window: Sequence[Piece], *, top: int) -> Breakdown:
        """Events by type, converted sessions and top products over one window."""
        ...


class Cache(Protocol):
    """A byte cache: reads are best effort (misses and outages fall back to storage).

    Versions are invalidation counters per scope (a UTC day): a cached value's key
    includes the versions of the scopes it read, so bumping a scope retires them all.
    """

    hits: int
    misses: int
    errors: int

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    def set_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        """Store (key, value, ttl seconds) triples in one round trip."""
        ...

    def versions(self, scopes: Sequence[str]) -> list[int] | None:
        """Current versions of the scopes, or None when the cache is unavailable."""
        ...

    def lookup(
        self, entries: Sequence[tuple[str, Sequence[str]]]
    ) -> list[tuple[str, bytes | None]] | None:
        """For each (base key, scopes): the key under the scopes' current versions and the
        value cached there, all in one round trip; None when the cache is unavailable."""
        ...

    def bump(self, scopes: Iterable[str]) -> None:
        """Invalidate everything cached under these scopes; raise CacheUnavailable if it
        could not (the caller retries: stale values must not outlive an outage)."""
        ...


class AggregationJobs(Protocol):
    """Enqueues background (re)computation of aggregates."""

    def enqueue_generate(self, period: str, start: datetime, end: datetime, tz: str) -> str:
        """Return the task (message) id once queued; raise QueueUnavailable."""
        ...


class TaskStatusStore(Protocol):
    """Status records of background tasks (one per Dramatiq message id), with a TTL.

    Updates are monotonic: an update applies only if its ``rank`` is at least the stored
    one, so hooks that race across processes (the API's after-enqueue and a worker's
    before-process) can arrive in any order. ``first`` fields are set only when absent,
    whatever the rank. Every update renews the record's expiry.
    """

    def apply(self, update: TaskUpdate) -> None: ...

    def get(self, task_id: str) -> TaskStatus | None:
        """The record, or None if unknown or expired."""
        ...


class UnitOfWork(Protocol):
    """Makes the writes of several adapters one atomic commit where the storage can
    (SQLite: one transaction, one fsync); a no-op where exactly-once rests on markers
    alone (DynamoDB, memory)."""

    def atomic(self) -> AbstractContextManager[object]: ...


class LocalDocuments(Protocol):
    """The in-process cache level, for whole response documents built only from closed
    buckets. Keys must contain the invalidation versions the document was computed under
    (read from the shared cache just before), which is what keeps it from going stale."""

    def get_local(self, key: str) -> bytes | None: ...

    def put_local(self, key: str, value: bytes, ttl_s: int) -> None:
        """Keep it if ``ttl_s`` is long enough for this level (closed periods); else ignore."""
        ...
