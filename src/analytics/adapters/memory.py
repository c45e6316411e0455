"""In-memory fakes of the ports: the unit tests' adapters and the contract suite's baseline.

They keep the same promises as the real adapters (idempotency, ordering) so the same
contract tests run against them.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Sequence

from analytics.domain.events import Event


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
