"""Helpers for the operations tests: events, a storage adapter that can be broken, settings."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from analytics.adapters.memory import InMemoryEventRepository
from analytics.domain.errors import StorageUnavailable
from analytics.domain.events import Event, EventIn
from analytics.domain.validation import build_event


def make_events(n: int, *, at: datetime | None = None, user: str = "u1") -> list[Event]:
    received = at or datetime.now(UTC)
    return [
        build_event(
            EventIn(
                event_type="page_view",
                user_id=user,
                session_id="s1",
                timestamp=received - timedelta(seconds=i),
            ),
            received_at=received,
            correlation_id=f"c-{i}",
            new_id=uuid.uuid4,
        )
        for i in range(n)
    ]


class BreakableRepository(InMemoryEventRepository):
    """An event store that fails with StorageUnavailable while ``broken``.

    With ``partial`` set it stores the first half of a batch before failing, like a store
    without transactions (DynamoDB batches) would: the replay must not count those twice.
    """

    def __init__(self, *, partial: bool = False) -> None:
        super().__init__()
        self.broken = False
        self.partial = partial
        self.failures = 0
        self._flock = threading.Lock()

    def add_many(self, events: Sequence[Event]) -> list[uuid.UUID]:
        if self.broken:
            with self._flock:
                self.failures += 1
            if self.partial:
                super().add_many(events[: len(events) // 2])
            raise StorageUnavailable("the event store is down (test)")
        return super().add_many(events)
