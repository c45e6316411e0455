"""Notification use cases: choose which events are announced, and announce them.

Only events of the configured types are published (e.g. ``purchase``, ``signup``), and
only while they are not stored yet: the worker hands them to the ``notifications`` queue
*before* it stores them. A worker that dies between the two redelivers and announces
again (at least once, never lost; subscribers dedupe on the ``event_id`` attribute); once
stored, a redelivery or a client retry of the same ``event_id`` announces nothing.
Publishing runs on its own queue: a slow or failing topic never holds up storage, and
failures are retried there, then dead-lettered.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from analytics.domain.events import Event
from analytics.domain.ports import EventRepository, Notifier


def select_notifiable(events: Sequence[Event], event_types: Collection[str]) -> list[Event]:
    """The events that subscribers asked for, in input order."""
    return [e for e in events if e.event_type in event_types]


def announce_unstored(
    events: Sequence[Event],
    *,
    repo: EventRepository,
    event_types: Collection[str],
    enqueue: Callable[[list[Event]], object],
) -> list[Event]:
    """Hand the notifiable events that are not stored yet to ``enqueue``; call it before
    storing them. Costs one read of the notifiable events only (usually a small share)."""
    chosen = select_notifiable(events, event_types)
    if not chosen:
        return []
    stored = repo.get_many(e.event_id for e in chosen)
    fresh: list[Event] = []
    seen: set[object] = set()
    for e in chosen:
        if e.event_id not in stored and e.event_id not in seen:
            seen.add(e.event_id)
            fresh.append(e)
    if fresh:
        enqueue(fresh)
    return fresh


def publish_notifications(events: Sequence[Event], *, notifier: Notifier) -> int:
    """Publish the group; raises NotificationFailed (retried by the caller's queue)."""
    if events:
        notifier.publish(events)
    return len(events)
