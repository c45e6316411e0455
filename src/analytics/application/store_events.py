"""Worker use case: store a group of validated events exactly once.

Delivery is at least once, so this must be idempotent in effect: the repository ignores
an ``event_id`` it already holds, and only new events go on to the later stages.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from analytics.domain.events import Event
from analytics.domain.ports import EventRepository


@dataclass(frozen=True, slots=True)
class StoreResult:
    received: int
    stored: int
    duplicates: int
    new_ids: tuple[uuid.UUID, ...] = ()


def store_events(events: Sequence[Event], *, repo: EventRepository) -> StoreResult:
    new_ids = repo.add_many(events)
    return StoreResult(
        received=len(events),
        stored=len(new_ids),
        duplicates=len(events) - len(new_ids),
        new_ids=tuple(new_ids),
    )
