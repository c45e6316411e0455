"""A worker told to stop while its Redis is gone for good stops; it does not retry its
acks for the whole shutdown timeout.

dramatiq's worker thread retries a failed ack every 5 s until the broker answers, and the
worker's stop waits for its threads: when ``serve`` was killed outright its embedded Redis
went with it, and a worker that had a message in hand lingered for ten minutes (a CI run
found it alive after a minute). While stopping, the consumer now gives the ack up: the
message stays in its ack set and is delivered again once Redis is back.
"""

from __future__ import annotations

import threading
import uuid

import dramatiq
import pytest
from dramatiq import Worker

from analytics.adapters.dramatiq_queue import build_broker
from analytics.adapters.embedded_redis import RedisServerProcess
from analytics.settings import Settings

pytestmark = pytest.mark.integration


def test_a_stopping_worker_gives_up_an_ack_its_dead_redis_cannot_take(
    own_redis: RedisServerProcess,
) -> None:
    settings = Settings(redis_host="127.0.0.1", redis_port=own_redis.port,
                        namespace=f"stop-{uuid.uuid4().hex[:8]}")  # fmt: skip
    broker = build_broker(settings)
    started, release = threading.Event(), threading.Event()

    @dramatiq.actor(broker=broker, queue_name="high_priority", max_retries=0)
    def in_hand() -> None:
        started.set()
        release.wait(30)

    worker = Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    stopper = threading.Thread(target=worker.stop, kwargs={"timeout": 600_000}, daemon=True)
    try:
        message = in_hand.send()
        assert started.wait(30), "the worker never took the message"
        own_redis.stop()  # gone: the ack will fail, and go on failing
        release.set()
        stopper.start()
        stopper.join(60)  # before: ten minutes (the shutdown timeout) of ack retries
        assert not stopper.is_alive(), "the worker is still retrying its ack"
    finally:
        release.set()
        if own_redis.proc is None:
            own_redis.start()
        stopper.join(5)
    # Nothing lost: the message was never acknowledged, so it waits in the dead
    # consumer's ack set, from where dramatiq requeues it once that heartbeat is stale.
    client = own_redis.client()
    acks = [k.decode() for k in client.keys(f"{settings.namespace}:__acks__.*.high_priority")]
    held = {m.decode() for k in acks for m in client.smembers(k)}
    assert message.options["redis_message_id"] in held
    broker.close()
