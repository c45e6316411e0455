"""Worker use case: store a group of validated events, and count each exactly once.

Delivery is at least once, so this must be idempotent in effect: the repository ignores
an ``event_id`` it already holds, and the aggregate store applies an event's contribution
only if its applied-marker is absent (marker and increments commit together). Every event
of the message is offered to the aggregates, not only the new ones: an event stored by an
attempt that died before counting is counted by the redelivery. Contributions come from
the STORED version of each event, so a client retry that reuses an ``event_id`` with
different content can never make the counts disagree with the stored event.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

from analytics.domain.aggregation import contribution
from analytics.domain.events import Event
from analytics.domain.ports import AggregateStore, Cache, EventRepository, UnitOfWork


@dataclass(frozen=True, slots=True)
class StoreResult:
    received: int
    stored: int
    duplicates: int
    new_ids: tuple[uuid.UUID, ...] = ()
    counted: int = 0  # contributions newly applied to the aggregates


def cache_scopes(events: Iterable[Event]) -> set[str]:
    """The cache invalidation scopes (UTC days) that these events touch."""
    return {e.timestamp.date().isoformat() for e in events}


def store_events(
    events: Sequence[Event],
    *,
    repo: EventRepository,
    aggregates: AggregateStore | None = None,
    cache: Cache | None = None,
    uow: UnitOfWork | None = None,
) -> StoreResult:
    with uow.atomic() if uow is not None else nullcontext():
        new_ids, counted, stored = _store_and_count(events, repo, aggregates)
    if cache is not None and stored:
        # Bump even when nothing was new: the attempt that counted may have died
        # before it invalidated. CacheUnavailable propagates: the message is retried
        # (everything above is idempotent) until the invalidation lands.
        cache.bump(sorted(cache_scopes(stored.values())))
    return StoreResult(
        received=len(events),
        stored=len(new_ids),
        duplicates=len(events) - len(new_ids),
        new_ids=tuple(new_ids),
        counted=counted,
    )


def _store_and_count(
    events: Sequence[Event], repo: EventRepository, aggregates: AggregateStore | None
) -> tuple[list[uuid.UUID], int, dict[uuid.UUID, Event]]:
    new_ids = repo.add_many(events)
    counted = 0
    stored: dict[uuid.UUID, Event] = {}
    if aggregates is not None and events:
        ids = list(dict.fromkeys(e.event_id for e in events))
        # A new id was stored from its first occurrence here; only the others (stored by
        # an earlier message) are read back, so the common case costs no extra read.
        new = set(new_ids)
        for e in events:
            if e.event_id in new and e.event_id not in stored:
                stored[e.event_id] = e
        if len(stored) < len(ids):
            stored.update(repo.get_many(i for i in ids if i not in stored))
        counted = len(aggregates.apply([contribution(stored[i]) for i in ids if i in stored]))
    return new_ids, counted, stored
