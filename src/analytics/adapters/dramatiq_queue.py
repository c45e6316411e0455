"""Dramatiq brokers and the ingest side's task queue, with group commit.

Group commit: concurrent requests in one API process share one broker round trip. Each
request puts its events on a pending list and waits; one flusher thread takes everything
pending, sends it as a single Dramatiq message, and wakes every waiter with the message id
once Redis (or RabbitMQ, with publisher confirms) has it. Nothing answers 202 before its
event is in the broker; under load, batches grow by themselves and round trips per event
fall, without adding latency when the service is idle.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from analytics.adapters import codec
from analytics.domain.errors import QueueUnavailable
from analytics.domain.events import Event

if TYPE_CHECKING:
    from analytics.settings import Settings

QUEUES = ("high_priority", "aggregations", "notifications", "maintenance")
PROCESS_EVENTS = "process_events"
PUBLISH_NOTIFICATIONS = "publish_notifications"  # its policy: entrypoints/policies.py


def build_broker(settings: Settings, middleware: list[dramatiq.Middleware] | None = None) -> dramatiq.Broker:
    """The broker chosen by settings. Redis is the default; ``stub`` is for unit tests."""
    broker: dramatiq.Broker
    if settings.broker == "redis":
        broker = RedisBroker(
            client=redis.Redis(**settings.redis_kwargs()),  # type: ignore[arg-type]
            namespace=settings.namespace,
            heartbeat_timeout=int(settings.heartbeat_timeout_s * 1000),
            maintenance_chance=settings.broker_maintenance_chance,
            dead_message_ttl=settings.dead_message_ttl_s * 1000,
            middleware=middleware,
        )
    elif settings.broker == "rabbitmq":
        from dramatiq.brokers.rabbitmq import RabbitmqBroker  # noqa: PLC0415 - optional dep

        broker = RabbitmqBroker(
            url=settings.rabbitmq_url, confirm_delivery=True, middleware=middleware
        )
    else:
        broker = StubBroker(middleware=middleware)
    from analytics.adapters.dead_letter_recorder import DeadLetterRecorder  # noqa: PLC0415

    # ``after_*`` hooks run in reverse order: placed before Retries, it sees Retries' verdict.
    broker.add_middleware(DeadLetterRecorder(), before=dramatiq.middleware.Retries)
    for queue in QUEUES:
        broker.declare_queue(queue)
    return broker


def events_message(events: Sequence[Event]) -> dramatiq.Message[object]:
    """One ``process_events`` message carrying a group of events, with their correlation ids."""
    correlation_ids = sorted({e.correlation_id for e in events if e.correlation_id})
    return dramatiq.Message(
        queue_name="high_priority",
        actor_name=PROCESS_EVENTS,
        args=(codec.encode(events).decode(),),
        kwargs={},
        options={"correlation_ids": correlation_ids[:50]},
    )


def notifications_message(events: Sequence[Event]) -> dramatiq.Message[object]:
    """One ``publish_notifications`` message for a group of newly stored events."""
    correlation_ids = sorted({e.correlation_id for e in events if e.correlation_id})
    return dramatiq.Message(
        queue_name="notifications",
        actor_name=PUBLISH_NOTIFICATIONS,
        args=(codec.encode(events).decode(),),
        kwargs={},
        options={"correlation_ids": correlation_ids[:50]},
    )


class _Slot:
    __slots__ = ("done", "error", "events", "task_id")

    def __init__(self, events: Sequence[Event]) -> None:
        self.events = events
        self.done = threading.Event()
        self.task_id: str | None = None
        self.error: BaseException | None = None


class GroupCommitQueue:
    """TaskQueue port over a Dramatiq broker; concurrent callers share one enqueue."""

    def __init__(
        self, broker: dramatiq.Broker, *, max_events: int = 2000, timeout_s: float = 5.0
    ) -> None:
        self.broker = broker
        self.max_events = max_events
        self.timeout_s = timeout_s
        self._pending: list[_Slot] = []
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def enqueue_events(self, events: Sequence[Event]) -> str:
        slot = _Slot(events)
        with self._cv:
            self._ensure_flusher()
            self._pending.append(slot)
            self._cv.notify()
        if not slot.done.wait(self.timeout_s):
            with self._cv:
                if slot in self._pending:  # never sent: safe to refuse
                    self._pending.remove(slot)
                    raise QueueUnavailable("the broker did not confirm in time", retry_after=5)
            # In flight: the send itself is bounded by the client's socket timeout.
            slot.done.wait()
        if slot.error is not None:
            raise QueueUnavailable(f"the broker is unavailable: {slot.error}") from slot.error
        assert slot.task_id is not None
        return slot.task_id

    def _ensure_flusher(self) -> None:
        # gunicorn forks after import: a thread started in the parent does not exist here.
        if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
            self._thread.start()

    def _take(self) -> list[_Slot]:
        taken, count = [], 0
        while self._pending and (not taken or count + len(self._pending[0].events) <= self.max_events):
            slot = self._pending.pop(0)
            taken.append(slot)
            count += len(slot.events)
        return taken

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending:
                    self._cv.wait()
                group = self._take()
            events = [e for slot in group for e in slot.events]
            try:
                message = self.broker.enqueue(events_message(events))
            except Exception as exc:  # noqa: BLE001 - every waiter hears about it
                for slot in group:
                    slot.error = exc
                    slot.done.set()
                continue
            for slot in group:
                slot.task_id = message.message_id
                slot.done.set()


class DirectQueue:
    """One message per call, no grouping: the baseline the benchmark compares against."""

    def __init__(self, broker: dramatiq.Broker) -> None:
        self.broker = broker

    def enqueue_events(self, events: Sequence[Event]) -> str:
        try:
            return self.broker.enqueue(events_message(events)).message_id
        except Exception as exc:  # noqa: BLE001
            raise QueueUnavailable(f"the broker is unavailable: {exc}") from exc
