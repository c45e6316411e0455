"""Dramatiq middleware: record why a message failed for good, inside the dead letter itself.

Dramatiq's Retries middleware writes a traceback into the message options only when it
retries, and nothing when an actor's ``throws`` error skips the retries. This middleware
runs after Retries: when a message is about to be dead-lettered it adds a ``failure``
option (error type, message, traceback, attempts, permanent) and, on the Redis broker,
rewrites the stored message so that the dead-letter queue receives it with that option.
(A message for an actor the worker does not know is dead-lettered by Dramatiq's consumer
before it reaches an actor; such a letter shows error type ``unknown``.)
"""

from __future__ import annotations

import time
import traceback
from typing import Any

import dramatiq
import structlog
from dramatiq.brokers.redis import RedisBroker

_MAX_ERROR = 2000
log = structlog.get_logger("analytics.dead_letters")


class DeadLetterRecorder(dramatiq.Middleware):
    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None or not message.failed:
            return
        actor = broker.actors.get(message.actor_name)
        throws = message.options.get("throws") or (actor.options.get("throws") if actor else None)
        permanent = bool(throws and isinstance(exception, throws))
        retries = int(message.options.get("retries", 0))
        message.options["failure"] = {
            "error_type": type(exception).__name__,
            "error": str(exception)[:_MAX_ERROR],
            "traceback": "".join(
                traceback.format_exception(
                    type(exception), exception, exception.__traceback__, limit=30
                )
            ),
            "attempts": retries + 1 if permanent else max(retries, 1),
            "permanent": permanent,
            "failed_at_ms": int(time.time() * 1000),
        }
        # dramatiq says only "Aborting message" at INFO: one ERROR line an operator (or a
        # log-based alert) sees, with what ``analytics dlq show`` needs.
        log.error(
            "message dead-lettered", message_id=message.message_id, queue=message.queue_name,
            actor=message.actor_name, error_type=type(exception).__name__,
            error=str(exception)[:200], attempts=message.options["failure"]["attempts"],
            permanent=permanent,
        )  # fmt: skip
        if isinstance(broker, RedisBroker) and "redis_message_id" in message.options:
            # The nack that follows moves this hash entry to the .XQ: update it first.
            broker.client.hset(
                f"{broker.namespace}:{message.queue_name}.msgs",
                message.options["redis_message_id"],
                message.encode(),
            )
