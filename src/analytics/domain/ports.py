"""Ports: what the application needs from the outside world, as Protocols.

Adapters satisfy them structurally (no inheritance); fakes in ``adapters.memory`` satisfy
the same contracts and run the same contract tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Protocol

from analytics.domain.events import Event


class Clock(Protocol):
    def now(self) -> datetime:
        """Current time, timezone-aware UTC."""
        ...


class IdGenerator(Protocol):
    def __call__(self) -> uuid.UUID: ...


class EventRepository(Protocol):
    """Raw events, stored once per ``event_id``."""

    def add_many(self, events: Sequence[Event]) -> list[uuid.UUID]:
        """Store events idempotently; return the ids that were new (in input order)."""
        ...

    def get_many(self, event_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Event]:
        """Fetch stored events by id; missing ids are absent from the result."""
        ...

    def count(self) -> int:
        """Number of stored events (for health and tests; may be approximate on big stores)."""
        ...


class TaskQueue(Protocol):
    """Hands validated events to background processing."""

    def enqueue_events(self, events: Sequence[Event]) -> str:
        """Return a task id once the events are durably queued; raise QueueUnavailable."""
        ...


class Notifier(Protocol):
    """Publishes stored events to subscribers (SNS in production)."""

    def publish(self, events: Sequence[Event]) -> None:
        """Publish one notification per event; raise an AdapterError if any was not taken."""
        ...
