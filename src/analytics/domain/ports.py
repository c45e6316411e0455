"""Ports: what the application needs from the outside world, as Protocols.

Adapters satisfy them structurally (no inheritance); fakes in ``adapters.memory`` satisfy
the same contracts and run the same contract tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Protocol

from analytics.domain.auth import ApiKey
from analytics.domain.events import Event
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


# --- security (issue 7) -------------------------------------------------------------------
class ApiKeyStore(Protocol):
    """Hashed API keys by id. Revoked keys stay (so ids are never reused)."""

    def add(self, key: ApiKey) -> None: ...

    def get(self, key_id: str) -> ApiKey | None: ...

    def list(self) -> list[ApiKey]:
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
