"""In-memory fakes of the ports: the unit tests' adapters and the contract suite's baseline.

They keep the same promises as the real adapters (idempotency, ordering) so the same
contract tests run against them.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

import msgspec

from analytics.domain.auth import ApiKey
from analytics.domain.events import Event
from analytics.domain.ratelimit import Quota, RateDecision, decision
from analytics.domain.search import EventQuery, SearchKey, sort_key
from analytics.domain.tasks import TaskStatus, TaskUpdate, merge


class InMemoryEventRepository:
    def __init__(self) -> None:
        self._events: dict[uuid.UUID, Event] = {}
        self._lock = threading.Lock()

    def add_many(self, events: Sequence[Event]) -> list[uuid.UUID]:
        new: list[uuid.UUID] = []
        with self._lock:
            for e in events:
                if e.event_id not in self._events:
                    self._events[e.event_id] = e
                    new.append(e.event_id)
        return new

    def get_many(self, event_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Event]:
        with self._lock:
            return {i: self._events[i] for i in event_ids if i in self._events}

    def count(self) -> int:
        return len(self._events)

    def all(self) -> list[Event]:
        with self._lock:
            return list(self._events.values())

    def search(self, query: EventQuery, *, after: SearchKey | None, limit: int) -> list[Event]:
        """The reference semantics of the port (a fake may scan; real adapters may not)."""
        start = after and sort_key(after.timestamp, after.event_id)
        hits = []
        for e in self.all():
            key = sort_key(e.timestamp, e.event_id)
            if (
                (query.event_type is None or e.event_type == query.event_type)
                and (query.user_id is None or e.user_id == query.user_id)
                and (query.session_id is None or e.session_id == query.session_id)
                and (query.product_id is None or e.product_id == query.product_id)
                and (query.start is None or e.timestamp >= query.start)
                and (query.end is None or e.timestamp < query.end)
                and (start is None or key > start)
            ):
                hits.append((key, e))
        hits.sort(key=lambda pair: pair[0])
        return [e for _, e in hits[:limit]]


class InMemoryTaskQueue:
    """Records what was queued; optionally hands it straight to a handler (sync 'worker')."""

    def __init__(self, handler: Callable[[Sequence[Event]], object] | None = None) -> None:
        self.batches: list[tuple[str, list[Event]]] = []
        self.handler = handler

    def enqueue_events(self, events: Sequence[Event]) -> str:
        task_id = str(uuid.uuid4())
        self.batches.append((task_id, list(events)))
        if self.handler is not None:
            self.handler(events)
        return task_id

    @property
    def events(self) -> list[Event]:
        return [e for _, batch in self.batches for e in batch]


# --- security (issue 7) -------------------------------------------------------------------
class InMemoryApiKeyStore:
    """ApiKeyStore over a dict; same promises as the SQLite store."""

    def __init__(self) -> None:
        self._keys: dict[str, ApiKey] = {}
        self._lock = threading.Lock()

    def add(self, key: ApiKey) -> None:
        with self._lock:
            if key.key_id in self._keys:
                raise ValueError(f"duplicate key id {key.key_id}")
            self._keys[key.key_id] = key

    def get(self, key_id: str) -> ApiKey | None:
        return self._keys.get(key_id)

    def list(self) -> list[ApiKey]:
        return sorted(self._keys.values(), key=lambda k: (k.created_at, k.key_id))

    def revoke(self, key_id: str, at: datetime) -> bool:
        with self._lock:
            key = self._keys.get(key_id)
            if key is None or not key.active:
                return False
            self._keys[key_id] = msgspec.structs.replace(key, revoked_at=at)
            return True


class InMemoryRateLimiter:
    """GCRA like the Redis script, per process; time from an injectable monotonic clock."""

    def __init__(self, now_ms: Callable[[], float] | None = None) -> None:
        self._tat: dict[str, float] = {}
        self._lock = threading.Lock()
        self._now_ms = now_ms or (lambda: time.monotonic() * 1000)

    def hit(self, bucket: str, cost: int, quota: Quota) -> RateDecision:
        interval = quota.emission_interval_ms
        capacity = quota.burst * interval
        with self._lock:
            now = self._now_ms()
            tat = max(self._tat.get(bucket, now), now)
            new_tat = tat + cost * interval
            allow_at = new_tat - capacity
            if allow_at > now:
                remaining = int((capacity - (tat - now)) // interval)
                return decision(quota, False, remaining, math.ceil(tat - now),
                                math.ceil(allow_at - now))  # fmt: skip
            self._tat[bucket] = new_tat
            remaining = int((capacity - (new_tat - now)) // interval)
            return decision(quota, True, remaining, math.ceil(new_tat - now), 0)


class FixedBacklog:
    """Backlog with a depth and drain rate the test sets."""

    def __init__(self, depth: int = 0, drain_rate: float | None = None) -> None:
        self._depth, self._rate = depth, drain_rate

    def set(self, depth: int, drain_rate: float | None = None) -> None:
        self._depth, self._rate = depth, drain_rate

    def depth(self) -> int:
        return self._depth

    def drain_rate(self) -> float | None:
        return self._rate

class InMemoryTaskStatusStore:
    """TaskStatusStore fake: monotonic merges under a lock; expiry is not modelled."""

    def __init__(self) -> None:
        self._records: dict[str, tuple[dict[str, object], int]] = {}
        self._lock = threading.Lock()
        self.applied: list[TaskUpdate] = []

    def apply(self, update: TaskUpdate) -> None:
        with self._lock:
            record, rank = self._records.get(update.task_id, ({}, -1))
            self._records[update.task_id] = merge(record, rank, update)
            self.applied.append(update)

    def get(self, task_id: str) -> TaskStatus | None:
        with self._lock:
            found = self._records.get(task_id)
        if found is None or "status" not in found[0]:
            return None
        return TaskStatus(task_id=task_id, **found[0])  # type: ignore[arg-type]
