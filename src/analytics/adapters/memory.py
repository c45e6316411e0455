"""In-memory fakes of the ports: the unit tests' adapters and the contract suite's baseline.

They keep the same promises as the real adapters (idempotency, ordering) so the same
contract tests run against them.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime

import msgspec

from analytics.domain.aggregation import (
    Breakdown,
    Contribution,
    CounterKey,
    Summary,
    breakdown_counters,
    summarize_counters,
)
from analytics.domain.auth import ApiKey
from analytics.domain.buckets import Piece
from analytics.domain.clock import SystemClock
from analytics.domain.errors import CacheUnavailable
from analytics.domain.events import Event
from analytics.domain.operations import DeadLetter
from analytics.domain.ports import AggregateSnapshot, Clock
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

    def purge_before(self, cutoff: datetime) -> int:
        with self._lock:
            old = [i for i, e in self._events.items() if e.timestamp < cutoff]
            for i in old:
                del self._events[i]
        return len(old)

    def iter_range(
        self, start: datetime, end: datetime, *, page_size: int = 1000
    ) -> Iterator[Event]:
        with self._lock:
            hits = [e for e in self._events.values() if start <= e.timestamp < end]
        hits.sort(key=lambda e: (e.timestamp, str(e.event_id)))
        return iter(hits)

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


class InMemoryNotifier:
    """Notifier fake: keeps what was published; ``fail_next`` makes the next calls fail."""

    def __init__(self) -> None:
        self.published: list[Event] = []
        self.fail_next = 0
        self._lock = threading.Lock()

    def publish(self, events: Sequence[Event]) -> None:
        from analytics.domain.errors import NotificationFailed  # noqa: PLC0415

        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                raise NotificationFailed("fake notifier told to fail")
            self.published.extend(events)


class NullNotifier:
    """Notifications switched off (no topic configured): publishing does nothing."""

    def publish(self, events: Sequence[Event]) -> None:
        return None

class InMemoryDeadLetters:
    """DeadLetters fake: letters in a dict; replay hands them to ``on_replay`` (a fake queue)."""

    def __init__(self, on_replay: Callable[[DeadLetter], object] | None = None) -> None:
        self.letters: dict[str, DeadLetter] = {}
        self.payloads: dict[str, object] = {}
        self.replayed: list[DeadLetter] = []
        self.recorded: tuple[dict[str, int], datetime] | None = None
        self.on_replay = on_replay

    def add(self, letter: DeadLetter, payload: object = None) -> None:
        self.letters[letter.letter_id] = letter
        self.payloads[letter.letter_id] = payload

    def list(self, *, queue: str | None = None, actor: str | None = None) -> list[DeadLetter]:
        out = [
            d for d in self.letters.values()
            if (queue is None or d.queue == queue) and (actor is None or d.actor == actor)
        ]  # fmt: skip
        return sorted(out, key=lambda d: (d.failed_at, d.letter_id))

    def replay(self, letter_ids: Sequence[str]) -> list[str]:
        done = []
        for i in letter_ids:
            letter = self.letters.pop(i, None)
            if letter is None:
                continue
            letter = replace(letter, replays=letter.replays + 1)
            self.replayed.append(letter)
            if self.on_replay is not None:
                self.on_replay(letter)
            done.append(i)
        return done

    def purge(self, letter_ids: Sequence[str]) -> list[str]:
        return [i for i in letter_ids if self.letters.pop(i, None) is not None]

    def depths(self) -> dict[str, int]:
        from analytics.adapters.dramatiq_queue import QUEUES  # noqa: PLC0415

        out = dict.fromkeys(QUEUES, 0)
        for d in self.letters.values():
            out[d.queue] = out.get(d.queue, 0) + 1
        return out

    def record_depths(self, depths: dict[str, int], at: datetime) -> None:
        self.recorded = (dict(depths), at)

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
    """GCRA like the Redis script, per process; time from an injectable monotonic clock.

    A bucket whose TAT has passed is full again, the same as one never seen, so it is
    dropped (the Redis script's key expires then): clients rotating addresses must not
    grow the process without end. A sweep starts when the table has doubled since the
    last one and goes through it a slice per hit: one pass over 600,000 buckets under the
    lock held every request for 200 ms (review).
    """

    SWEEP_SLICE = 512

    def __init__(self, now_ms: Callable[[], float] | None = None) -> None:
        self._tat: dict[str, float] = {}
        self._lock = threading.Lock()
        self._now_ms = now_ms or (lambda: time.monotonic() * 1000)
        self._sweep_at = 1024  # table size that starts the next sweep
        self._sweeping: list[str] = []  # the buckets the sweep has still to look at

    def _sweep(self, now: float) -> None:
        if not self._sweeping:
            if len(self._tat) < self._sweep_at:
                return
            self._sweeping = list(self._tat)  # in C: no pause worth the name
        tat = self._tat
        for bucket in self._sweeping[-self.SWEEP_SLICE:]:
            if tat.get(bucket, math.inf) <= now:
                del tat[bucket]
        del self._sweeping[-self.SWEEP_SLICE:]
        if not self._sweeping:
            self._sweep_at = max(1024, 2 * len(tat))

    def hit(self, bucket: str, cost: int, quota: Quota) -> RateDecision:
        interval, slack = quota.emission_interval_ms, quota.slack_ms
        capacity = quota.burst * interval
        with self._lock:
            now = self._now_ms()
            tat = max(self._tat.get(bucket, now), now)
            new_tat = tat + cost * interval
            allow_at = new_tat - capacity
            if allow_at > now + slack:
                remaining = int((capacity - (tat - now) + slack) // interval)
                return decision(quota, False, remaining, math.ceil(tat - now),
                                math.ceil(allow_at - now))  # fmt: skip
            self._tat[bucket] = new_tat
            self._sweep(now)
            remaining = int((capacity - (new_tat - now) + slack) // interval)
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
class InMemoryAggregateStore:
    """Counters in a dict, applied markers in a dict, one lock for both (one 'transaction')."""

    def __init__(self) -> None:
        self.counters: dict[CounterKey, int] = defaultdict(int)
        self.markers: dict[uuid.UUID, int] = {}  # event_id -> epoch minute
        self._lock = threading.Lock()

    def apply(self, contributions: Sequence[Contribution]) -> list[uuid.UUID]:
        new: list[uuid.UUID] = []
        with self._lock:
            for c in contributions:
                if c.event_id in self.markers:
                    continue
                self.markers[c.event_id] = c.minute
                for k, v in c.deltas.items():
                    self.counters[k] += v
                new.append(c.event_id)
        return new

    def snapshot(self, start: int, end: int) -> AggregateSnapshot:
        with self._lock:
            return AggregateSnapshot(
                counters={k: v for k, v in self.counters.items() if start <= k.bucket < end and v},
                applied={i for i, m in self.markers.items() if start <= m < end},
            )

    def correct(self, deltas: Mapping[CounterKey, int]) -> None:
        with self._lock:
            for k, v in deltas.items():
                self.counters[k] += v

    def summarize(
        self, windows: Sequence[Sequence[Piece]], event_type: str | None
    ) -> list[Summary]:
        with self._lock:
            counters = dict(self.counters)
        return [
            summarize_counters(counters, [(p.grain, p.start, p.end) for p in w], event_type)
            for w in windows
        ]

    def breakdown(self, window: Sequence[Piece], *, top: int) -> Breakdown:
        with self._lock:
            counters = dict(self.counters)
        return breakdown_counters(counters, [(p.grain, p.start, p.end) for p in window], top)


class InMemoryCache:
    """The Cache port over a dict with expiry by an injected clock; ``down`` simulates an
    outage (every call misses, like the Redis adapter does when Redis is unreachable)."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()
        self.data: dict[str, tuple[bytes, float]] = {}
        self.scope_versions: dict[str, int] = defaultdict(int)
        self.hits = self.misses = self.errors = 0
        self.down = False
        self.ttls: dict[str, int] = {}
        self.round_trips = 0  # lookups and version reads (what a Redis would answer)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if self.down:
            self.errors += 1
            self.misses += len(keys)
            return [None] * len(keys)
        now = self.clock.now().timestamp()
        out: list[bytes | None] = []
        for k in keys:
            hit = self.data.get(k)
            if hit is not None and hit[1] > now:
                self.hits += 1
                out.append(hit[0])
            else:
                self.misses += 1
                out.append(None)
        return out

    def set_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        if self.down:
            self.errors += 1
            return
        now = self.clock.now().timestamp()
        for k, v, ttl in items:
            self.data[k] = (v, now + ttl)
            self.ttls[k] = ttl

    def versions(self, scopes: Sequence[str]) -> list[int] | None:
        self.round_trips += 1
        if self.down:
            self.errors += 1
            return None
        return [self.scope_versions[s] for s in scopes]

    def lookup(
        self, entries: Sequence[tuple[str, Sequence[str]]]
    ) -> list[tuple[str, bytes | None]] | None:
        self.round_trips += 1
        if self.down:
            self.errors += 1
            self.misses += len(entries)
            return None
        keys = [
            base + ":" + ".".join(str(self.scope_versions[s]) for s in scopes)
            for base, scopes in entries
        ]
        return list(zip(keys, self.get_many(keys), strict=True))

    def lookup_held(
        self, entries: Sequence[tuple[str, Sequence[str]]], held: Sequence[str | None] | None
    ) -> list[tuple[str, bytes | bool | None]] | None:
        """Like the Redis adapter: ``True`` for an entry whose held key is current (its
        value not read), else the value or None; one call."""
        self.round_trips += 1
        if self.down:
            self.errors += 1
            self.misses += len(entries)
            return None
        out: list[tuple[str, bytes | bool | None]] = []
        for i, (base, scopes) in enumerate(entries):
            key = base + ":" + ".".join(str(self.scope_versions[s]) for s in scopes)
            if held is not None and held[i] == key:
                out.append((key, True))
            else:
                out.append((key, self.get_many([key])[0]))
        return out

    def bump(self, scopes: Iterable[str]) -> None:
        if self.down:
            self.errors += 1
            raise CacheUnavailable("cache is down")
        for s in scopes:
            self.scope_versions[s] += 1


class InMemoryAggregationJobs:
    """Records generate requests; optionally runs them at once through ``handler``."""

    def __init__(self, handler: Callable[..., object] | None = None) -> None:
        self.jobs: list[tuple[str, str, datetime, datetime, str]] = []
        self.handler = handler

    def enqueue_generate(self, period: str, start: datetime, end: datetime, tz: str) -> str:
        task_id = str(uuid.uuid4())
        self.jobs.append((task_id, period, start, end, tz))
        if self.handler is not None:
            self.handler(period, start, end, tz)
        return task_id


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
