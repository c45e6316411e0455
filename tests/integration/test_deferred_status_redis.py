"""Running records on Redis: many per round trip, and what a real worker shows."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime

import dramatiq
import pytest
import redis
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker

from analytics.adapters.embedded_redis import RedisServerProcess
from analytics.adapters.redis_task_status import RedisTaskStatusStore
from analytics.adapters.task_status_middleware import (
    DeferredUpdates,
    TaskStatusMiddleware,
    install,
)
from analytics.domain import tasks
from analytics.domain.clock import SystemClock
from tests.redis_broker_support import CountingConnection
from tests.support import wait_until

pytestmark = pytest.mark.integration

T = datetime(2026, 3, 1, tzinfo=UTC)


def store_on(server: RedisServerProcess) -> RedisTaskStatusStore:
    pool = redis.ConnectionPool(
        host="127.0.0.1", port=server.port, connection_class=CountingConnection
    )
    return RedisTaskStatusStore(
        redis.Redis(connection_pool=pool), namespace=f"ds-{uuid.uuid4().hex[:8]}", ttl_s=600
    )


def test_apply_many_writes_every_update_in_one_round_trip(private_redis: RedisServerProcess):
    store = store_on(private_redis)
    store.apply(tasks.queued("warm", actor="a", queue="q", at=T, retries=0))  # script loaded
    updates = [
        tasks.running(f"m{i}", actor="a", queue="q", at=T, retries=0, enqueued_at=T)
        for i in range(40)
    ]
    before = CountingConnection.count()
    store.apply_many(updates)
    assert CountingConnection.count() - before == 1
    for i in range(40):
        status = store.get(f"m{i}")
        assert status is not None and status.status == "running" and status.started_at == T


def test_apply_many_reloads_a_forgotten_script(private_redis: RedisServerProcess):
    store = store_on(private_redis)
    store.client.script_flush()  # our own server: as a restarted Redis would be
    store.apply_many([tasks.queued("m", actor="a", queue="q", at=T, retries=0)])
    status = store.get("m")
    assert status is not None and status.status == "queued"


def test_a_real_worker_shows_running_then_succeeded(private_redis: RedisServerProcess):
    store = store_on(private_redis)
    broker = RedisBroker(
        client=redis.Redis(host="127.0.0.1", port=private_redis.port),
        namespace=store.namespace,
        heartbeat_timeout=2000,
    )
    install(
        broker,
        TaskStatusMiddleware(store, SystemClock(), deferred=DeferredUpdates(store.apply_many)),
    )
    gate = threading.Event()

    @dramatiq.actor(broker=broker, actor_name="slow", queue_name="default")
    def slow() -> dict[str, int]:
        gate.wait(10)
        return {"done": 1}

    message = slow.send()
    worker = Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        wait_until(
            lambda: getattr(store.get(message.message_id), "status", None) == "running", timeout=10
        )
        gate.set()
        wait_until(
            lambda: getattr(store.get(message.message_id), "status", None) == "succeeded",
            timeout=10,
        )
    finally:
        gate.set()
        worker.stop()
    status = store.get(message.message_id)
    assert status is not None
    assert (status.attempts, status.result) == (1, {"done": 1})
    assert status.started_at is not None and status.finished_at is not None
    assert status.started_at <= status.finished_at
