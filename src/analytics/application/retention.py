"""Retention: raw events older than the retention period are deleted; aggregates stay."""

from __future__ import annotations

from datetime import datetime, timedelta

from analytics.domain.ports import EventRepository


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
