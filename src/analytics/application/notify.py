"""Notification use cases: choose which stored events are announced, and announce them.

Only events of the configured types are published (e.g. ``purchase``, ``signup``), and
only when they were newly stored, so a client retry of the same ``event_id`` does not
announce it twice. Publishing runs on its own queue (``notifications``): a slow or failing
topic never holds up storage, and failures are retried there, then dead-lettered.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from analytics.domain.events import Event
from analytics.domain.ports import Notifier


def select_notifiable(events: Sequence[Event], event_types: Collection[str]) -> list[Event]:
    """The events that subscribers asked for, in input order."""
    return [e for e in events if e.event_type in event_types]


def publish_notifications(events: Sequence[Event], *, notifier: Notifier) -> int:
    """Publish the group; raises NotificationFailed (retried by the caller's queue)."""
    if events:
        notifier.publish(events)
    return len(events)
