"""A failed attempt whose retry cannot be enqueued must not be acknowledged.

dramatiq's Retries enqueues the retry in ``after_process_message``; when Redis does not
take it (stalled or down at that moment), dramatiq logs the error and the worker then
acknowledged the original: the message was gone, neither retried nor dead-lettered. A QA
chaos pass lost 16 events that had their 202 this way (storage failing while Redis was
stopped). Here the retry's enqueue fails on purpose while the ack still works, which is
exactly that moment.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Worker
from dramatiq.middleware.time_limit import TimeLimitExceeded

from analytics.adapters.dramatiq_queue import build_broker
from analytics.adapters.embedded_redis import RedisServerProcess
from analytics.settings import Settings
from tests.support import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_settings(request: pytest.FixtureRequest) -> Settings:
    if request.param == "rabbitmq":
        redis_server: RedisServerProcess = request.getfixturevalue("private_redis")
        return Settings(broker="rabbitmq", rabbitmq_url=request.getfixturevalue("rabbitmq_url"),
                        redis_host="127.0.0.1", redis_port=redis_server.port,
                        namespace=f"retry-{uuid.uuid4().hex[:8]}")  # fmt: skip
    redis_server = request.getfixturevalue("private_redis")
    return Settings(redis_host="127.0.0.1", redis_port=redis_server.port,
                    namespace=f"retry-{uuid.uuid4().hex[:8]}")  # fmt: skip


def _flaky_broker(settings: Settings) -> tuple[Any, Any, list[int]]:
    """A broker (orphan sweep every 0.2 s on Redis) with an actor that fails its first
    attempt only, and the list of the attempts' arguments."""
    broker = build_broker(settings)
    broker.orphan_sweep_s = 0.2  # type: ignore[attr-defined] - Redis: the sweep that requeues
    attempts: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="high_priority", max_retries=3,
                    min_backoff=10, max_backoff=20)  # fmt: skip
    def flaky(n: int) -> None:
        attempts.append(n)
        if len(attempts) == 1:
            raise RuntimeError("storage down for the first attempt")

    return broker, flaky, attempts


def _run_until_second_attempt(broker: Any, attempts: list[int], threads: int, lost: str) -> None:
    worker = Worker(broker, worker_threads=threads, worker_timeout=50)
    worker.start()
    try:
        wait_until(lambda: len(attempts) == 2, timeout=30, message=lost)
        broker.join("high_priority", timeout=10_000)
    finally:
        worker.stop()
        broker.close()


def test_a_message_whose_retry_was_not_enqueued_is_requeued_not_lost(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker, flaky, attempts = _flaky_broker(broker_settings)
    enqueue = broker.enqueue
    refused: list[str] = []

    def stalled_for_retries(message: Any, *, delay: int | None = None) -> Any:
        if delay is not None:  # Retries' delayed copy: Redis "does not answer" right now
            refused.append(message.message_id)
            raise redis.TimeoutError("Timeout reading from socket")  # (RabbitMQ: any error)
        return enqueue(message, delay=delay)

    monkeypatch.setattr(broker, "enqueue", stalled_for_retries)
    flaky.send(7)
    _run_until_second_attempt(broker, attempts, 1, "the failed message was acknowledged and lost")
    assert refused and attempts == [7, 7]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_message_whose_failure_handling_was_cut_short_is_requeued_not_lost(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The actor's time limit fires while the worker logs the failure (a QA chaos pass: the
    log pipe blocked for minutes, then ``TimeLimitExceeded`` was raised inside the log
    call). The exception escapes dramatiq's failure handling before Retries runs, and the
    worker's ``finally`` acknowledged the message: 8 and 58 events lost. It must come back."""
    broker, flaky, attempts = _flaky_broker(broker_settings)
    worker_log = logging.getLogger("dramatiq.worker.WorkerThread")
    log_error = worker_log.error
    cut: list[str] = []

    def time_limit_fires(msg: object, *args: object, **kwargs: object) -> None:
        if not cut and isinstance(msg, str) and msg.startswith("Failed to process message"):
            cut.append(msg)
            raise TimeLimitExceeded  # as dramatiq's TimeLimit raises it in the worker thread
        log_error(msg, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(worker_log, "error", time_limit_fires)
    flaky.send(7)
    # The escaping exception ends its worker thread (dramatiq's loop does not catch it):
    # the requeued message is run by the other one.
    _run_until_second_attempt(broker, attempts, 2,
                              "the message was acknowledged without its outcome and lost")  # fmt: skip
    assert cut and attempts == [7, 7]
