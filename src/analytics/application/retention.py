"""Retention: raw events older than the retention period are deleted; aggregates stay.

The applied markers (one per counted event: what stops a redelivery from counting it
again) go with the raw events, but never while the event could still be offered again:
an event is accepted at most ``max_past`` old, and its message comes back (retries, a
replayed dead letter) within the redelivery window, so a marker older than both has
nothing left to stop. Kept, they were the one part of the store that grew with every
event for ever (50 bytes each, a soak: 10,000 per 10,000 events).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from analytics.domain.ports import AggregateStore, EventRepository


def retention_cutoff(now: datetime, days: int) -> datetime:
    """Start of the UTC day ``days`` days ago: whole days, so reruns pick the same cutoff."""
    day = (now - timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)
    return day


def purge_events_before(cutoff: datetime, *, repo: EventRepository) -> int:
    if cutoff.tzinfo is None:
        raise ValueError("cutoff must be timezone-aware (UTC)")
    purge = getattr(repo, "purge_before", None)
    if purge is None:  # a store that expires events itself (DynamoDB TTL) needs no purge
        return 0
    return int(purge(cutoff))


def marker_cutoff(
    now: datetime, events_cutoff: datetime, *, max_past: timedelta, redelivery_window: timedelta
) -> datetime:
    """Applied markers of minutes before this are purged: the events' cutoff, or, when that
    is more recent, the start of the UTC day before which no event can be offered again.
    Never after the events' cutoff: reconcile reads a stored event without a marker as
    one never counted, and would count it again."""
    return min(events_cutoff, retention_cutoff(now - max_past - redelivery_window, 0))


def purge_markers_before(cutoff: datetime, *, aggregates: AggregateStore | None) -> int:
    if cutoff.tzinfo is None:
        raise ValueError("cutoff must be timezone-aware (UTC)")
    purge = getattr(aggregates, "purge_markers_before", None)
    if purge is None:  # a store whose markers expire by themselves, or none at all
        return 0
    return int(purge(cutoff))


def marker_lifetime(
    retention_days: int, *, max_past: timedelta, redelivery_window: timedelta
) -> timedelta:
    """How long after its minute a marker must live, for a store whose markers expire by
    themselves (DynamoDB's TTL): the retention period or the redelivery horizon of
    :func:`marker_cutoff`, whichever is longer, and a day for the cutoffs' whole days."""
    return max(timedelta(days=retention_days), max_past + redelivery_window) + timedelta(days=1)
