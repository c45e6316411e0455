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

import structlog
from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer

from analytics.adapters.dramatiq_queue import kept_because

log = structlog.get_logger("analytics.broker")


class _KeepingConsumer(_RabbitmqConsumer):  # type: ignore[misc]
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
    @property
    def consumer_class(self) -> type[_RabbitmqConsumer]:
        return _KeepingConsumer
