"""RedisEnqueuer: a group's message and its task-status record in one Redis round trip.

It calls dramatiq's dispatch script itself (to share the round trip), so these tests pin
what that must keep true: a real dramatiq worker consumes what it sends, exactly once; the
``queued`` record is there when the call returns; a Redis that forgot its scripts costs a
reload, never a lost or doubled message. A private redis-server: the tests flush scripts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dramatiq
import msgspec
import pytest
import redis
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker

from analytics.adapters.dramatiq_queue import (
    GroupCommitQueue,
    MsgspecJSONEncoder,
    RedisEnqueuer,
    events_message,
)
from analytics.adapters.embedded_redis import RedisServerProcess
from analytics.adapters.redis_task_status import RedisTaskStatusStore
from analytics.adapters.task_status_middleware import TaskStatusMiddleware, install
from analytics.domain.clock import SystemClock
from analytics.domain.errors import QueueUnavailable
from analytics.domain.events import Event
from tests import aggsupport
from tests.redis_broker_support import CountingConnection, counting_broker
from tests.support import free_port, wait_until

NOW = datetime.now(UTC)


@pytest.fixture
def broker(private_redis: RedisServerProcess) -> Iterator[RedisBroker]:
    b = counting_broker(private_redis, RedisBroker, "enq")
    b.declare_queue("high_priority")
    yield b
    b.close()


def make_event(i: int) -> Event:
    return aggsupport.make_event(NOW, user=f"u{i}", session=f"s{i}")


def status_of(broker: RedisBroker, task_id: str) -> str | None:
    store = next(m for m in broker.middleware if isinstance(m, TaskStatusMiddleware)).store
    record = store.get(task_id)
    return record.status if record else None


def consumer(broker: RedisBroker) -> tuple[list[str], threading.Event]:
    """A ``process_events`` actor on this broker that records what it got."""
    got: list[str] = []
    done = threading.Event()

    @dramatiq.actor(actor_name="process_events", queue_name="high_priority", broker=broker)
    def process_events(payload: str) -> None:
        got.append(payload)
        done.set()

    return got, done


def test_message_and_record_go_in_one_round_trip(broker: RedisBroker) -> None:
    enqueue = RedisEnqueuer.for_broker(broker)
    assert enqueue is not None
    enqueue(events_message([make_event(0)]))  # loads nothing lazily afterwards
    before = CountingConnection.count()
    sent = enqueue(events_message([make_event(1), make_event(2)]))
    assert CountingConnection.count() - before == 1  # one write, one round trip
    assert status_of(broker, sent.message_id) == "queued"
    assert broker.do_qsize("high_priority") == 2


def test_a_real_worker_consumes_it_once_and_the_record_follows(broker: RedisBroker) -> None:
    got, done = consumer(broker)
    queue = GroupCommitQueue(broker, send=RedisEnqueuer.for_broker(broker))
    task_id = queue.enqueue_events([make_event(i) for i in range(3)])
    worker = Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        assert done.wait(20)
        broker.join("high_priority", timeout=20_000)
        wait_until(lambda: status_of(broker, task_id) == "succeeded", timeout=10)
    finally:
        worker.stop()
    assert len(got) == 1  # exactly once


def test_a_redis_that_forgot_its_scripts_costs_a_reload_not_a_message(
    broker: RedisBroker,
) -> None:
    enqueue = RedisEnqueuer.for_broker(broker)
    assert enqueue is not None
    broker.client.script_flush()
    sent = enqueue(events_message([make_event(0)]))
    assert broker.do_qsize("high_priority") == 1  # sent once, not twice
    assert status_of(broker, sent.message_id) == "queued"


def test_other_brokers_and_a_status_store_elsewhere_use_broker_enqueue(
    broker: RedisBroker, private_redis: RedisServerProcess, tmp_path: Path
) -> None:
    assert RedisEnqueuer.for_broker(dramatiq.brokers.stub.StubBroker()) is None
    other = RedisServerProcess(tmp_path, port=free_port()).start()
    try:
        b = RedisBroker(client=redis.Redis(host="127.0.0.1", port=private_redis.port), namespace="x")
        install(b, TaskStatusMiddleware(
            RedisTaskStatusStore(other.client(), namespace="x", ttl_s=60), SystemClock()))  # fmt: skip
        assert RedisEnqueuer.for_broker(b) is None  # records live elsewhere: no shared trip
    finally:
        other.stop()


def test_msgspec_encoder_speaks_dramatiqs_json() -> None:
    message = events_message([make_event(0)])
    ours = MsgspecJSONEncoder()
    stock = dramatiq.JSONEncoder()
    data = message.asdict()
    # The events ride as raw JSON (msgspec.Raw), which only our encoder writes; the bytes
    # are plain JSON all the same: stock dramatiq reads them, and we read stock's.
    events = msgspec.json.decode(bytes(message.args[0]))
    as_json = stock.decode(stock.encode({**data, "args": [events]}))  # tuples -> lists
    assert stock.decode(ours.encode(data)) == as_json
    assert ours.decode(stock.encode({**data, "args": [events]})) == as_json
    with pytest.raises(dramatiq.DecodeError):
        ours.decode(b"{not json")


def test_prefetched_messages_are_requeued_when_the_consumer_stops(broker: RedisBroker) -> None:
    """What the consumer fetched but never handed out goes back to the queue at shutdown,
    instead of waiting in the stopped worker's ack set for its heartbeat to expire."""
    from types import SimpleNamespace  # noqa: PLC0415

    from analytics.adapters.dramatiq_queue import RequeuePrefetched  # noqa: PLC0415

    for i in range(5):
        broker.enqueue(events_message([make_event(i)]))
    consumer = broker.consume("high_priority", prefetch=5, timeout=1000)
    taken = next(consumer)  # fetches all five, hands out one
    acks = f"{broker.namespace}:__acks__.{broker.broker_id}.high_priority"
    assert broker.client.scard(acks) == 5
    RequeuePrefetched().before_consumer_thread_shutdown(
        broker, SimpleNamespace(consumer=consumer, queue_name="high_priority")
    )
    assert broker.client.scard(acks) == 1  # only the one a worker thread holds
    assert broker.client.llen(f"{broker.namespace}:high_priority") == 4
    consumer.ack(taken)
    assert broker.client.scard(acks) == 0


def test_every_redis_broker_the_service_builds_requeues_its_prefetch(
    private_redis: RedisServerProcess,
) -> None:
    from analytics.adapters.dramatiq_queue import RequeuePrefetched, build_broker  # noqa: PLC0415
    from analytics.settings import Settings  # noqa: PLC0415

    built = build_broker(
        Settings.from_env({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(private_redis.port)})
    )
    try:
        assert any(isinstance(m, RequeuePrefetched) for m in built.middleware)
    finally:
        built.close()


def test_a_dispatch_that_redis_refuses_is_not_a_202(own_redis: RedisServerProcess) -> None:
    """Mutation QA: the dispatch script's error reply (here OOM: a Redis full under
    ``maxmemory`` with ``noeviction``; a READONLY replica answers alike) comes back as a
    value in the pipeline's results, not as an exception. It must be raised: swallowed, the
    caller got a task id (a 202) for a message that was never queued."""
    b = counting_broker(own_redis, RedisBroker, "oom")
    b.declare_queue("high_priority")
    queue = GroupCommitQueue(b, send=RedisEnqueuer.for_broker(b))
    try:
        queue.enqueue_events([make_event(0)])  # scripts loaded, the pipeline path warm
        b.client.config_set("maxmemory-policy", "noeviction")
        b.client.config_set("maxmemory", 1)
        with pytest.raises(QueueUnavailable, match="OOM"):
            queue.enqueue_events([make_event(1)])
        b.client.config_set("maxmemory", 0)
        assert b.do_qsize("high_priority") == 1  # the first message only
    finally:
        b.close()
