"""dramatiq's RabbitMQ broker, with a consumer that gives back a message whose retry could
not be enqueued, or whose processing ended before its outcome was recorded
(:func:`~analytics.adapters.dramatiq_queue.kept_because`), instead of acknowledging it: ``basic_nack`` with ``requeue=True``, so RabbitMQ delivers it again.
dramatiq's consumer would acknowledge it, and the message would be gone (see
``dramatiq_queue.DurableRetries``). Imported only with ``ANALYTICS_BROKER=rabbitmq``
(pika is an optional dependency).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pika.exceptions
import structlog
from dramatiq import Message
from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer

from analytics.adapters.dramatiq_queue import UNDECODABLE_ACTOR, kept_because

log = structlog.get_logger("analytics.broker")


class _KeepingConsumer(_RabbitmqConsumer):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._nacked: set[int] = set()  # tags in nack() now: its hooks run

    def nack(self, message: Any) -> None:
        self._nacked.add(message._tag)
        try:
            super().nack(message)
        finally:
            self._nacked.discard(message._tag)

    def _nack(self, tag: int) -> None:
        """Every nack ends here; one that did not come through :meth:`nack` is dramatiq's
        own for a body that does not decode (another producer's bytes): dead-lettered
        without the broker's nack hooks, so ``analytics_tasks_dead_lettered_total`` never
        counted it. They run now, with a stand-in, as the Redis consumer does."""
        super()._nack(tag)
        if tag in self._nacked:
            return
        self.broker.emit_after("nack", Message(
            queue_name=self.queue_name, actor_name=UNDECODABLE_ACTOR, args=(), kwargs={},
            options={}, message_id=f"undecodable-{tag}", message_timestamp=0,
        ))  # fmt: skip

    def ack(self, message: Any) -> None:
        reason = kept_because(message)
        if reason is None:
            super().ack(message)
            return
        try:
            self.known_tags.remove(message._tag)
        except KeyError:
            return
        self.connection.add_callback_threadsafe(
            partial(self.channel.basic_nack, message._tag, requeue=True)
        )
        log.warning(
            f"{reason}; the message goes back to its queue",
            message_id=message.message_id, queue=message.queue_name,
        )  # fmt: skip


class KeepingRabbitmqBroker(RabbitmqBroker):  # type: ignore[misc]
    """dramatiq keeps one connection per thread and replaces a dead one only in
    ``enqueue``: once RabbitMQ closed it, every read on that thread (queue depths for the
    overload check, ``/metrics``, ``/health/detailed``) failed until the thread happened
    to enqueue (QA). Reads here take a fresh connection instead."""

    @property
    def consumer_class(self) -> type[_RabbitmqConsumer]:
        return _KeepingConsumer

    def get_queue_message_counts(self, queue_name: str) -> tuple[int, int, int]:
        return self._reconnecting(super().get_queue_message_counts, queue_name)  # type: ignore[no-any-return]

    def new_channel(self) -> Any:
        """A channel of its own on this thread's connection (the dead-letter visits)."""
        return self._reconnecting(lambda: self.connection.channel())

    def ping(self) -> None:
        """A round trip to RabbitMQ (a channel opened and closed) on this thread's
        connection, a new one if RabbitMQ closed it. pika's ``is_open`` stays true for a
        connection the broker closed until it next reads from it: ``/health/detailed``
        said ``ok`` through a whole outage (QA)."""
        self._reconnecting(lambda: self.connection.channel().close())

    def live_connection(self) -> Any:
        """This thread's connection, a new one if RabbitMQ closed the last."""
        if not self.connection.is_open:
            del self.connection
        return self.connection

    def _reconnecting(self, call: Any, *args: Any) -> Any:
        """``call``, once more on a new connection if the thread's one was found closed."""
        try:
            return call(*args)
        except pika.exceptions.AMQPError:
            del self.connection  # and its channel
            return call(*args)
