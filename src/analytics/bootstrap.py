"""The composition root: wires adapters to ports from settings, once per process.

Callers (tests above all) pass any collaborator they want to replace; only what they did
not pass is built from settings. Importing this module has no effect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import dramatiq

from analytics.domain.clock import SystemClock, uuid4
from analytics.domain.ports import Clock, EventRepository, IdGenerator, TaskQueue
from analytics.domain.validation import DEFAULT_LIMITS, Limits
from analytics.settings import Settings

if TYPE_CHECKING:
    from analytics.domain.ports import DeadLetters


@dataclass
class Container:
    """Everything a process needs, built by :func:`bootstrap`."""

    settings: Settings
    clock: Clock
    new_id: IdGenerator
    broker: dramatiq.Broker
    task_queue: TaskQueue
    event_repo: EventRepository
    limits: Limits = DEFAULT_LIMITS
    dead_letters: DeadLetters | None = None
    extras: dict[str, object] = field(default_factory=dict)


def build_event_repo(settings: Settings) -> EventRepository:
    if settings.storage == "memory":
        from analytics.adapters.memory import InMemoryEventRepository  # noqa: PLC0415

        return InMemoryEventRepository()
    if settings.storage == "sqlite":
        from analytics.adapters.sqlite_store import (  # noqa: PLC0415
            SQLiteDatabase,
            SQLiteEventRepository,
        )

        return SQLiteEventRepository(SQLiteDatabase(settings.sqlite_path))
    raise ValueError(f"storage {settings.storage!r} is not available in this build")


def build_dead_letters(broker: dramatiq.Broker) -> DeadLetters:
    """Dead letters of the Redis broker; other brokers get an empty in-memory view."""
    from dramatiq.brokers.redis import RedisBroker  # noqa: PLC0415

    if isinstance(broker, RedisBroker):
        from analytics.adapters.dead_letters import RedisDeadLetters  # noqa: PLC0415

        return RedisDeadLetters(broker)
    from analytics.adapters.memory import InMemoryDeadLetters  # noqa: PLC0415

    return InMemoryDeadLetters()


def bootstrap(
    settings: Settings,
    *,
    clock: Clock | None = None,
    new_id: IdGenerator | None = None,
    broker: dramatiq.Broker | None = None,
    task_queue: TaskQueue | None = None,
    event_repo: EventRepository | None = None,
    dead_letters: DeadLetters | None = None,
) -> Container:
    from analytics.adapters.dramatiq_queue import GroupCommitQueue, build_broker  # noqa: PLC0415

    broker = broker or build_broker(settings)
    return Container(
        settings=settings,
        clock=clock or SystemClock(),
        new_id=new_id or uuid4,
        broker=broker,
        task_queue=task_queue
        or GroupCommitQueue(
            broker,
            max_events=settings.group_commit_max_events,
            timeout_s=settings.enqueue_timeout_s,
        ),
        event_repo=event_repo or build_event_repo(settings),
        dead_letters=dead_letters or build_dead_letters(broker),
    )
