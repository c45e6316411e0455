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
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import dramatiq
import msgspec
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import current_millis

from analytics.adapters import codec
from analytics.adapters.redis_task_status import RedisTaskStatusStore
from analytics.adapters.task_status_middleware import STATUS_RECORDED, TaskStatusMiddleware
from analytics.domain.errors import QueueUnavailable
from analytics.domain.events import Event

if TYPE_CHECKING:
    from analytics.settings import Settings

QUEUES = ("high_priority", "aggregations", "notifications", "maintenance")
PROCESS_EVENTS = "process_events"
PUBLISH_NOTIFICATIONS = "publish_notifications"  # its policy: entrypoints/policies.py


class MsgspecJSONEncoder(dramatiq.Encoder):
    """Dramatiq's JSON wire format, encoded and decoded by msgspec instead of ``json``.

    The bytes stay plain JSON, so producers and workers of either encoder read each other's
    messages; encoding a group's message is several times cheaper, and on the ingest path
    it runs once per group on the flusher thread.
    """

    _encode = msgspec.json.Encoder().encode
    _decode = msgspec.json.Decoder().decode

    def encode(self, data: dict[str, Any]) -> bytes:
        return self._encode(data)

    def decode(self, data: bytes) -> dict[str, Any]:
        try:
            return self._decode(data)  # type: ignore[no-any-return]
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise dramatiq.DecodeError(
                f"failed to decode message {data[:200]!r}", data, exc
            ) from None


def build_broker(
    settings: Settings, middleware: list[dramatiq.Middleware] | None = None
) -> dramatiq.Broker:
    """The broker chosen by settings. Redis is the default; ``stub`` is for unit tests."""
    if not isinstance(dramatiq.get_encoder(), MsgspecJSONEncoder):
        dramatiq.set_encoder(MsgspecJSONEncoder())  # process-wide in dramatiq: same JSON bytes
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
    """One caller's events and the answer it waits for.

    ``_done`` is a bare lock held from creation and released once by the flusher: the
    cheapest one-shot signal CPython has (a ``threading.Event`` costs a Condition and a
    waiter lock on every wait), and it is paid once per request.
    """

    __slots__ = ("_done", "error", "events", "finished", "task_id")

    def __init__(self, events: Sequence[Event]) -> None:
        self.events = events
        self._done = threading.Lock()
        self._done.acquire()
        self.finished = False
        self.task_id: str | None = None
        self.error: BaseException | None = None

    def wait(self, timeout: float = -1) -> bool:
        if self.finished:
            return True
        if self._done.acquire(timeout=timeout):
            self._done.release()  # later waits return at once
            return True
        return False

    def finish(self, task_id: str | None = None, error: BaseException | None = None) -> None:
        self.task_id, self.error, self.finished = task_id, error, True
        self._done.release()


_PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


def _pid() -> int:
    """This process's id, without a system call per request."""
    return _PID[0]


class GroupCommitQueue:
    """TaskQueue port over a Dramatiq broker; concurrent callers share one enqueue.

    ``send`` enqueues one message and returns it as enqueued (default ``broker.enqueue``;
    on Redis, :class:`RedisEnqueuer` adds the task-status record to the same round trip).
    """

    def __init__(
        self,
        broker: dramatiq.Broker,
        *,
        max_events: int = 2000,
        timeout_s: float = 5.0,
        send: Callable[[dramatiq.Message[Any]], dramatiq.Message[Any]] | None = None,
    ) -> None:
        self.broker = broker
        self.send = send or broker.enqueue
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
        if not slot.wait(self.timeout_s):
            with self._cv:
                if slot in self._pending:  # never sent: safe to refuse
                    self._pending.remove(slot)
                    raise QueueUnavailable("the broker did not confirm in time", retry_after=5)
            # In flight: the send itself is bounded by the client's socket timeout.
            slot.wait()
        if slot.error is not None:
            raise QueueUnavailable(f"the broker is unavailable: {slot.error}") from slot.error
        assert slot.task_id is not None
        return slot.task_id

    def _ensure_flusher(self) -> None:
        # gunicorn forks after import: a thread started in the parent does not exist in the
        # child, so the pid is part of the check. The flusher never returns (it catches
        # every send error), so "started in this process" means "alive".
        if self._thread is None or self._pid != _pid():
            self._pid = _pid()
            self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
            self._thread.start()

    def _take(self) -> list[_Slot]:
        taken, count = [], 0
        while self._pending and (
            not taken or count + len(self._pending[0].events) <= self.max_events
        ):
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
                message = self.send(events_message(events))
            except Exception as exc:  # noqa: BLE001 - every waiter hears about it
                for slot in group:
                    slot.finish(error=exc)
                continue
            for slot in group:
                slot.finish(message.message_id)


class RedisEnqueuer:
    """``RedisBroker.enqueue`` in one round trip, the task-status record included.

    The broker's own ``enqueue`` runs dramatiq's dispatch script, then the task-status
    middleware writes the ``queued`` record in a second round trip. Here both go in one
    pipeline: the record first, then the dispatch script with the same arguments as
    ``RedisBroker.enqueue`` (dramatiq 2.x), and ``after_enqueue`` is told the record is
    written. A record without its message can only come from a failed send, whose id no
    client received; it expires with its TTL. ``tests/integration/test_redis_enqueuer.py``
    checks that a real worker consumes what this sends and that the record is there.
    """

    def __init__(self, broker: RedisBroker, status: TaskStatusMiddleware) -> None:
        self.broker = broker
        self.status = status
        self.store: RedisTaskStatusStore = status.store  # type: ignore[assignment]
        self.dispatch = broker.scripts["dispatch"]

    def __call__(self, message: dramatiq.Message[Any]) -> dramatiq.Message[Any]:
        b = self.broker
        message = message.copy(options={"redis_message_id": str(uuid.uuid4())})
        b.emit_before("enqueue", message, None)
        update = self.status.queued_update(message)
        encoded = message.encode()
        for attempt in (1, 2):
            pipe = b.client.pipeline(transaction=False)
            self.store.apply_in(pipe, update)
            pipe.evalsha(
                self.dispatch.sha, 1, b.namespace,
                "enqueue", current_millis(), message.queue_name, b.broker_id,
                b.heartbeat_timeout, b.dead_message_ttl, b._should_do_maintenance("enqueue"),  # noqa: SLF001
                b._max_unpack_size(),  # noqa: SLF001
                message.options["redis_message_id"], encoded,
            )  # fmt: skip
            recorded, sent = pipe.execute(raise_on_error=False)
            if isinstance(sent, redis.exceptions.NoScriptError) and attempt == 1:
                # A restarted Redis forgot the scripts; the dispatch did not run: load, redo.
                b.client.script_load(self.dispatch.script)
                self.store.load_script()
                continue
            break
        if isinstance(sent, Exception):
            raise sent
        if isinstance(recorded, Exception):  # the message is queued; its record is not
            if isinstance(recorded, redis.exceptions.NoScriptError):
                self.store.load_script()
            b.emit_after("enqueue", message, None)  # the middleware writes it the usual way
        else:
            b.emit_after("enqueue", message.copy(options={STATUS_RECORDED: True}), None)
        return message

    @classmethod
    def for_broker(cls, broker: dramatiq.Broker) -> RedisEnqueuer | None:
        """One for ``broker`` when it is a RedisBroker whose task-status middleware keeps
        its records in the same Redis; None otherwise (then ``broker.enqueue`` is used)."""
        if not isinstance(broker, RedisBroker):
            return None
        mw = next((m for m in broker.middleware if isinstance(m, TaskStatusMiddleware)), None)
        if mw is None or not isinstance(mw.store, RedisTaskStatusStore):
            return None
        if _server(mw.store.client) != _server(broker.client):
            return None
        return cls(broker, mw)


def _server(client: redis.Redis) -> tuple[object, ...]:
    kw = client.connection_pool.connection_kwargs
    return (kw.get("host"), kw.get("port"), kw.get("path"), kw.get("db", 0))


class DirectQueue:
    """One message per call, no grouping: the baseline the benchmark compares against."""

    def __init__(self, broker: dramatiq.Broker) -> None:
        self.broker = broker

    def enqueue_events(self, events: Sequence[Event]) -> str:
        try:
            return self.broker.enqueue(events_message(events)).message_id
        except Exception as exc:  # noqa: BLE001
            raise QueueUnavailable(f"the broker is unavailable: {exc}") from exc
