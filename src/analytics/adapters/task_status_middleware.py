"""Dramatiq middleware that keeps a status record per message in a TaskStatusStore.

Hooks and what they record (task id = message id):

| hook                   | where           | record                                         |
|------------------------|-----------------|------------------------------------------------|
| after_enqueue          | any producer    | ``queued`` (or ``retrying`` for a retry)      |
| before_process_message | worker          | ``running``, attempt n (on Redis: in the       |
|                        |                 | background, see :class:`DeferredUpdates`)      |
| after_process_message  | worker          | ``succeeded`` + result summary (on Redis: in   |
|                        |                 | the ack's round trip, see ``with_ack``),       |
|                        |                 | ``retrying``                                   |
|                        |                 | + last error, or ``failed`` + error once the   |
|                        |                 | message is dead-lettered (no retry left)       |
| after_skip_message     | worker          | ``failed`` if dead-lettered, else ``skipped``  |

Install it *before* ``Retries`` (see :func:`install`): ``emit_after`` runs middleware in
reverse order, so ours then runs after ``Retries`` has decided between a retry and the
dead-letter queue. A status write never breaks processing: failures are logged.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import dramatiq
import structlog
from dramatiq.common import q_name
from dramatiq.middleware import Retries

from analytics.domain import tasks
from analytics.domain.ports import Clock, TaskStatusStore

log = structlog.get_logger("analytics.task_status")
STATUS_RECORDED = "task_status_recorded"  # an after_enqueue option: the record is written
# A MessageProxy attribute: the ``succeeded`` update its consumer writes with the ack.
STATUS_ON_ACK = "_analytics_status_on_ack"


class DeferredUpdates:
    """Best-effort status updates written by one background thread, many per round trip.

    A worker thread's ``running`` record cost a round trip of its own before the message
    could start: about a tenth of the worker's CPU per message (cProfile, 8 threads). Here
    :meth:`submit` only queues the update; a thread of this process writes everything
    queued with one ``apply_many`` (one pipeline on Redis), then looks again. The record
    may land after the attempt's outcome: updates merge by rank (``domain.tasks``), so
    the outcome stays and the start time still fills in. A write that fails is logged and
    dropped, as a synchronous one would be; what is still queued when the process dies is
    lost the same way (the record then shows the message ``queued`` until it reruns).

    The thread starts with the first update, in the process that submits it (a forked
    child starts its own: the parent's queue and thread are not inherited).
    """

    def __init__(self, apply_many: Callable[[list[tasks.TaskUpdate]], None]) -> None:
        self._apply_many = apply_many
        self._reset()
        ref = weakref.ref(self)  # at-fork callbacks are never removed: do not keep self alive
        os.register_at_fork(after_in_child=lambda: (d := ref()) is not None and d._reset())

    def _reset(self) -> None:
        self._cv = threading.Condition(threading.Lock())
        self._pending: list[tasks.TaskUpdate] = []
        self._writing = False
        self._thread: threading.Thread | None = None

    def submit(self, update: tasks.TaskUpdate) -> None:
        with self._cv:
            self._pending.append(update)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="task-status-writer", daemon=True
                )
                self._thread.start()
            elif len(self._pending) == 1:
                self._cv.notify()  # the writer sleeps only when nothing is queued

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything submitted so far is written (or dropped); False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._pending and not self._writing, timeout)

    def _run(self) -> None:
        while True:
            with self._cv:
                self._writing = False
                self._cv.notify_all()  # a flush may be waiting
                self._cv.wait_for(lambda: bool(self._pending))
                batch, self._pending, self._writing = self._pending, [], True
            self._write(batch)

    def _write(self, batch: Sequence[tasks.TaskUpdate]) -> None:
        try:
            self._apply_many(list(batch))
        except Exception as exc:  # noqa: BLE001 - status is best effort, work is not
            log.warning("task status not recorded", updates=len(batch), error=str(exc))


class TaskStatusMiddleware(dramatiq.Middleware):
    def __init__(
        self, store: TaskStatusStore, clock: Clock, *, deferred: DeferredUpdates | None = None
    ) -> None:
        self.store = store
        self.clock = clock
        # Set: ``running`` records go through it (written in the background, batched).
        self.deferred = deferred
        # message id -> (attempt being processed, when it started)
        self._attempts: dict[str, tuple[int, datetime]] = {}
        self._lock = threading.Lock()
        # True when the broker's consumer writes a message's ``succeeded`` record in the
        # same round trip as its ack, first the record, then the ack (set by
        # ``dramatiq_queue.carry_status_on_ack`` after checking it can).
        self.with_ack = False

    def _apply(self, update: tasks.TaskUpdate) -> None:
        try:
            self.store.apply(update)
        except Exception as exc:  # noqa: BLE001 - status is best effort, work is not
            log.warning("task status not recorded", task_id=update.task_id, error=str(exc))

    def queued_update(self, message: dramatiq.Message[Any]) -> tasks.TaskUpdate:
        return tasks.queued(
            message.message_id,
            generation=_generation(message),
            actor=message.actor_name,
            queue=q_name(message.queue_name),
            at=self.clock.now(),
            retries=int(message.options.get("retries", 0)),
        )

    def after_enqueue(
        self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None
    ) -> None:
        if message.options.get(STATUS_RECORDED):
            return  # written in the enqueue's own round trip (dramatiq_queue.RedisEnqueuer)
        self._apply(self.queued_update(message))

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        retries = int(message.options.get("retries", 0))
        started = self.clock.now()
        with self._lock:
            self._attempts[message.message_id] = (retries + 1, started)
        (self.deferred.submit if self.deferred is not None else self._apply)(
            tasks.running(
                message.message_id,
                generation=_generation(message),
                actor=message.actor_name,
                queue=q_name(message.queue_name),
                at=started,
                retries=retries,
                enqueued_at=datetime.fromtimestamp(message.message_timestamp / 1000, UTC),
            )
        )

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self.deferred is not None:
            self.deferred.flush()

    def _attempt(self, message: Any) -> tuple[int, datetime]:
        """The attempt that ends now, and when it ends: never before it started, so a
        wall clock stepped back meanwhile (NTP, a VM resumed) cannot record a task that
        finished before it began."""
        now = self.clock.now()
        with self._lock:
            begun = self._attempts.pop(message.message_id, None)
        if begun is None:
            return int(message.options.get("retries", 0)) + 1, now
        return begun[0], max(now, begun[1])

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        attempt, now = self._attempt(message)
        if message.failed:
            error: BaseException | str = exception or "the message failed before it ran"
            self._apply(
                tasks.failed(
                    message.message_id,
                    generation=_generation(message),
                    at=now,
                    attempts=attempt,
                    error=error,
                )
            )
        elif exception is None:
            update = tasks.succeeded(
                message.message_id,
                generation=_generation(message),
                at=now,
                attempts=attempt,
                result=result,
            )
            if self.with_ack:
                setattr(message, STATUS_ON_ACK, update)  # the ack right after writes it
            else:
                self._apply(update)
        elif _has_retries(broker):
            retries = int(message.options.get("retries", attempt))
            self._apply(
                tasks.retrying(
                    message.message_id,
                    generation=_generation(message),
                    retries=retries,
                    error=exception,
                )
            )
        else:  # without Retries a failed message is simply acknowledged: it is over
            self._apply(
                tasks.failed(
                    message.message_id,
                    generation=_generation(message),
                    at=now,
                    attempts=attempt,
                    error=exception,
                )
            )

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        attempt, now = self._attempt(message)
        if message.failed:
            self._apply(
                tasks.failed(
                    message.message_id,
                    generation=_generation(message),
                    at=now,
                    attempts=attempt,
                    error="skipped by a middleware",
                )
            )
        else:
            self._apply(
                tasks.skipped(
                    message.message_id,
                    generation=_generation(message),
                    at=now,
                    attempts=attempt,
                    reason="skipped by a middleware",
                )
            )


def _generation(message: Any) -> int:
    """How many times the message was replayed from the dead-letter queue (option
    ``replays``, set by the replay tool): each replay starts a new status life."""
    try:
        return max(0, int(message.options.get("replays", 0)))
    except (TypeError, ValueError):
        return 0


def _has_retries(broker: dramatiq.Broker) -> bool:
    return any(isinstance(m, Retries) for m in broker.middleware)


def install(broker: dramatiq.Broker, middleware: TaskStatusMiddleware) -> None:
    """Add the middleware just before ``Retries`` (or last if the broker has none)."""
    if _has_retries(broker):
        broker.add_middleware(middleware, before=Retries)
    else:
        broker.add_middleware(middleware)
