"""A failed attempt whose retry cannot be enqueued must not be acknowledged.

dramatiq's Retries enqueues the retry in ``after_process_message``; when Redis does not
take it (stalled or down at that moment), dramatiq logs the error and the worker then
acknowledged the original: the message was gone, neither retried nor dead-lettered. A QA
chaos pass lost 16 events that had their 202 this way (storage failing while Redis was
stopped). Here the retry's enqueue fails on purpose while the ack still works, which is
exactly that moment.
"""

from __future__ import annotations

import uuid
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Worker

from analytics.adapters.dramatiq_queue import build_broker
from analytics.adapters.embedded_redis import RedisServerProcess
from analytics.settings import Settings
from tests.support import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_settings(request: pytest.FixtureRequest) -> Settings:
    if request.param == "rabbitmq":
        return Settings(broker="rabbitmq", rabbitmq_url=request.getfixturevalue("rabbitmq_url"))
    redis_server: RedisServerProcess = request.getfixturevalue("private_redis")
    return Settings(redis_host="127.0.0.1", redis_port=redis_server.port,
                    namespace=f"retry-{uuid.uuid4().hex[:8]}")  # fmt: skip


def test_a_message_whose_retry_was_not_enqueued_is_requeued_not_lost(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = build_broker(broker_settings)
    broker.orphan_sweep_s = 0.2  # type: ignore[attr-defined] - Redis: the sweep that requeues
    attempts: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="high_priority", max_retries=3,
                    min_backoff=10, max_backoff=20)  # fmt: skip
    def flaky(n: int) -> None:
        attempts.append(n)
        if len(attempts) == 1:
            raise RuntimeError("storage down for the first attempt")

    enqueue = broker.enqueue
    refused: list[str] = []

    def stalled_for_retries(message: Any, *, delay: int | None = None) -> Any:
        if delay is not None:  # Retries' delayed copy: Redis "does not answer" right now
            refused.append(message.message_id)
            raise redis.TimeoutError("Timeout reading from socket")  # (RabbitMQ: any error)
        return enqueue(message, delay=delay)

    monkeypatch.setattr(broker, "enqueue", stalled_for_retries)
    flaky.send(7)
    worker = Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        wait_until(lambda: len(attempts) == 2, timeout=30,
                   message="the failed message was acknowledged and lost")  # fmt: skip
        broker.join("high_priority", timeout=10_000)
    finally:
        worker.stop()
        broker.close()
    assert refused and attempts == [7, 7]
