"""In-memory fakes of the ports: the unit tests' adapters and the contract suite's baseline.

They keep the same promises as the real adapters (idempotency, ordering) so the same
contract tests run against them.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime

from analytics.domain.events import Event
from analytics.domain.operations import DeadLetter
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
