"""StatusAckRedisBroker: a processed message's ``succeeded`` record and its ack share one
Redis round trip. What must stay true: the record is written (never dropped, whatever the
script cache or a broken record key), the message is acked exactly once, a failure still
goes the usual way, and nothing is carried when the records live elsewhere. A private
redis-server: the tests flush scripts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq import Worker
from dramatiq.middleware import Retries

from analytics.adapters.dramatiq_queue import (
    StatusAckRedisBroker,
    carry_status_on_ack,
)
from analytics.adapters.embedded_redis import RedisServerProcess
from analytics.adapters.memory import InMemoryTaskStatusStore
from analytics.adapters.redis_task_status import RedisTaskStatusStore
from analytics.adapters.task_status_middleware import TaskStatusMiddleware, install
from analytics.domain.clock import SystemClock
from tests.redis_broker_support import CountingConnection, counting_broker
from tests.support import free_port, wait_until


@pytest.fixture
def broker(private_redis: RedisServerProcess) -> Iterator[StatusAckRedisBroker]:
    b = counting_broker(private_redis, StatusAckRedisBroker, "ack")
    assert carry_status_on_ack(b)
    b.declare_queue("default")
    yield b
    b.close()


def status_of(broker: StatusAckRedisBroker, task_id: str) -> str | None:
    assert broker.status_store is not None
    record = broker.status_store.get(task_id)
    return record.status if record else None


def run(broker: StatusAckRedisBroker, *messages: dramatiq.Message[object]) -> None:
    worker = Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        broker.join("default", timeout=20_000)
        for m in messages:
            wait_until(lambda m=m: status_of(broker, m.message_id) in ("succeeded", "failed"),
                       timeout=10)  # fmt: skip
    finally:
        worker.stop()
    msgs = f"{broker.namespace}:default.msgs"
    assert broker.client.hlen(msgs) == 0  # every message acked, none left in flight


def test_the_record_and_the_ack_share_one_round_trip(broker: StatusAckRedisBroker) -> None:
    seen: list[int] = []
    writes: dict[str, int] = {}

    @dramatiq.actor(queue_name="default", broker=broker, max_retries=0)
    def work(n: int) -> dict[str, int]:
        seen.append(n)
        return {"n": n}

    class Spy(dramatiq.Middleware):  # runs last in after_process_message: just before the ack
        def after_process_message(self, broker, message, *, result=None, exception=None):  # type: ignore[no-untyped-def]
            writes[message.message_id] = CountingConnection.count()

        def after_ack(self, broker, message):  # type: ignore[no-untyped-def]
            now = CountingConnection.count()
            writes[message.message_id] = now - writes[message.message_id]

    broker.add_middleware(Spy(), before=TaskStatusMiddleware)
    sent = [work.send(i) for i in range(3)]
    run(broker, *sent)
    assert sorted(seen) == [0, 1, 2]  # each exactly once
    for m in sent:
        assert status_of(broker, m.message_id) == "succeeded"
        assert broker.status_store is not None
        record = broker.status_store.get(m.message_id)
        assert record is not None and record.result == {"n": m.args[0]} and record.attempts == 1
        assert writes[m.message_id] == 1  # record + ack: one write to Redis


def test_a_redis_that_forgot_its_scripts_still_gets_record_and_ack(
    broker: StatusAckRedisBroker,
) -> None:
    flushed = threading.Event()

    @dramatiq.actor(queue_name="default", broker=broker, max_retries=0)
    def work(n: int) -> int:
        broker.client.script_flush()  # between the running record and the ack
        flushed.set()
        return n

    sent = work.send(1)
    run(broker, sent)
    assert flushed.is_set()
    assert status_of(broker, sent.message_id) == "succeeded"


def test_a_record_that_cannot_be_written_never_blocks_the_ack(
    broker: StatusAckRedisBroker,
) -> None:
    @dramatiq.actor(queue_name="default", broker=broker, max_retries=0)
    def work(n: int) -> int:
        assert broker.status_store is not None
        broker.client.set(broker.status_store.key(sent.message_id), "not a hash")  # WRONGTYPE
        return n

    sent = work.message(1)
    broker.enqueue(sent)
    worker = Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        broker.join("default", timeout=20_000)
        wait_until(lambda: broker.client.hlen(f"{broker.namespace}:default.msgs") == 0, timeout=10)
    finally:
        worker.stop()


def test_a_failure_is_recorded_the_usual_way(broker: StatusAckRedisBroker) -> None:
    @dramatiq.actor(queue_name="default", broker=broker, max_retries=0)
    def boom() -> None:
        raise RuntimeError("no")

    assert any(isinstance(m, Retries) for m in broker.middleware)
    sent = boom.send()
    run(broker, sent)
    assert status_of(broker, sent.message_id) == "failed"


def test_nothing_is_carried_when_the_records_live_elsewhere(
    private_redis: RedisServerProcess, tmp_path: Path
) -> None:
    client = redis.Redis(host="127.0.0.1", port=private_redis.port)
    in_memory = StatusAckRedisBroker(client=client, namespace="x")
    mw = TaskStatusMiddleware(InMemoryTaskStatusStore(), SystemClock())
    install(in_memory, mw)
    assert not carry_status_on_ack(in_memory) and not mw.with_ack
    other = RedisServerProcess(tmp_path, port=free_port()).start()
    try:
        elsewhere = StatusAckRedisBroker(client=client, namespace="x")
        mw = TaskStatusMiddleware(RedisTaskStatusStore(other.client(), namespace="x", ttl_s=60),
                                  SystemClock())  # fmt: skip
        install(elsewhere, mw)
        assert not carry_status_on_ack(elsewhere) and not mw.with_ack
        assert elsewhere.status_store is None
    finally:
        other.stop()
    plain = dramatiq.brokers.stub.StubBroker()
    install(plain, TaskStatusMiddleware(InMemoryTaskStatusStore(), SystemClock()))
    assert not carry_status_on_ack(plain)


def test_the_service_builds_a_broker_that_carries_status_on_ack(
    private_redis: RedisServerProcess, tmp_path: Path
) -> None:
    from analytics.bootstrap import bootstrap  # noqa: PLC0415
    from analytics.settings import Settings  # noqa: PLC0415

    env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(private_redis.port),
           "ANALYTICS_DATA_DIR": str(tmp_path), "ANALYTICS_NAMESPACE": "svc-ack"}  # fmt: skip
    container = bootstrap(Settings.from_env(env))
    try:
        assert isinstance(container.broker, StatusAckRedisBroker)
        assert container.broker.status_store is not None
    finally:
        container.broker.close()
