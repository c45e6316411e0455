"""Dramatiq middleware: record why a message failed for good, inside the dead letter itself.

Dramatiq's Retries middleware writes a traceback into the message options only when it
retries, and nothing when an actor's ``throws`` error skips the retries. This middleware
runs after Retries: when a message is about to be dead-lettered it adds a ``failure``
option (error type, message, traceback, attempts, permanent) and, on the Redis broker,
rewrites the stored message so that the dead-letter queue receives it with that option.
(A message for an actor the worker does not know is dead-lettered by Dramatiq's consumer
before it reaches an actor; such a letter shows error type ``unknown``.)

RabbitMQ dead-letters the message as it was delivered, so an option added here never
reaches its ``.XQ`` queue: there the record goes to a :class:`FailureLog` in the Redis
beside RabbitMQ (``Settings.ops_redis``), keyed by message id, for as long as RabbitMQ
keeps the letter, and :class:`~analytics.adapters.dead_letters.RabbitDeadLetters` reads
it back (QA: every RabbitMQ letter of a permanent failure said ``unknown``, not permanent).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from typing import Any

import dramatiq
import msgspec
import structlog
from dramatiq.brokers.redis import RedisBroker

_MAX_ERROR = 2000
log = structlog.get_logger("analytics.dead_letters")


class FailureLog:
    """Why each dead letter failed, by message id, in Redis (beside RabbitMQ)."""

    def __init__(self, client: Any, namespace: str, ttl_s: int) -> None:
        self.client = client
        self.prefix = f"{namespace}:ops:dlq:failure:"
        self.ttl_s = ttl_s

    def record(self, message_id: str, failure: dict[str, Any]) -> None:
        self.client.set(self.prefix + message_id, msgspec.json.encode(failure), ex=self.ttl_s)

    def read(self, message_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The records there are; none when Redis cannot be read (the letters still list)."""
        if not message_ids:
            return {}
        try:
            values = self.client.mget([self.prefix + i for i in message_ids])
        except Exception as exc:  # noqa: BLE001 - the reasons are extra, the letters are not
            log.warning("dead-letter reasons unreadable", error=str(exc)[:200])
            return {}
        out: dict[str, dict[str, Any]] = {}
        for message_id, value in zip(message_ids, values, strict=True):
            try:
                record = msgspec.json.decode(value) if value else None
            except msgspec.DecodeError:
                record = None  # not ours to read: the letter lists without it
            if isinstance(record, dict):
                out[message_id] = record
        return out

    def forget(self, message_ids: Sequence[str]) -> None:
        """A replayed letter's copy keeps its id: its next death is its own (review: an
        unrecorded second death showed the first one's reason as current)."""
        if message_ids:
            try:
                self.client.delete(*[self.prefix + i for i in message_ids])
            except Exception as exc:  # noqa: BLE001 - it expires with the letter anyway
                log.warning("dead-letter reasons not forgotten", error=str(exc)[:200])


class DeadLetterRecorder(dramatiq.Middleware):
    def __init__(self, failures: FailureLog | None = None) -> None:
        self.failures = failures  # set on brokers that dead-letter the delivered message

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
        elif self.failures is not None:
            try:
                self.failures.record(message.message_id, message.options["failure"])
            except Exception as exc:  # noqa: BLE001 - the letter is kept either way
                log.warning("dead-letter reason not recorded", message_id=message.message_id,
                            error=str(exc)[:200])  # fmt: skip
