"""A real Redis broker whose connections count their round trips (shared by the tests of
the one-round-trip enqueue and of the status record carried with the ack)."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from typing import ClassVar, TypeVar

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from redis.connection import Connection

from analytics.adapters.dramatiq_queue import MsgspecJSONEncoder
from analytics.adapters.embedded_redis import RedisServerProcess
from analytics.adapters.redis_task_status import RedisTaskStatusStore
from analytics.adapters.task_status_middleware import TaskStatusMiddleware, install
from analytics.domain.clock import SystemClock

B = TypeVar("B", bound=RedisBroker)


class CountingConnection(Connection):
    """A real connection that counts its writes to the socket (one per round trip), by
    thread: a worker thread processes and acks its message; the consumer thread fetches."""

    writes: ClassVar[Counter[int]] = Counter()
    _handshake = False

    def on_connect_check_health(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        # A new connection's handshake (CLIENT SETINFO, ...) is not a round trip of the
        # code under test: a busy pool opens one at random (seen under -n 2: 5 writes).
        self._handshake = True
        try:
            return super().on_connect_check_health(*args, **kwargs)
        finally:
            self._handshake = False

    def send_packed_command(self, command, check_health=True):  # type: ignore[no-untyped-def]
        if not self._handshake:
            CountingConnection.writes[threading.get_ident()] += 1
        return super().send_packed_command(command, check_health)

    @classmethod
    def count(cls) -> int:
        """Writes so far by the calling thread."""
        return cls.writes[threading.get_ident()]


def counting_broker(server: RedisServerProcess, cls: type[B], prefix: str) -> B:
    """A ``cls`` broker on ``server`` (own namespace, counting connections, the msgspec
    envelope) with the task-status middleware keeping its records in the same Redis."""
    dramatiq.set_encoder(MsgspecJSONEncoder())
    pool = redis.ConnectionPool(
        host="127.0.0.1", port=server.port, connection_class=CountingConnection
    )
    client = redis.Redis(connection_pool=pool)
    b = cls(client=client, namespace=f"{prefix}-{uuid.uuid4().hex[:8]}", heartbeat_timeout=2000)
    store = RedisTaskStatusStore(client, namespace=b.namespace, ttl_s=600)
    install(b, TaskStatusMiddleware(store, SystemClock()))
    return b
