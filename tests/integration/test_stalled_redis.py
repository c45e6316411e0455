"""A Redis that is alive but does not answer (SIGSTOP: a stuck disk under ``appendfsync
always``, a network path that drops packets without a reset).

Ingest must answer 503 with ``Retry-After`` within its own timeouts, not hang until Redis
comes back: before, redis-py's default retries (three, with backoff, timeouts included)
on each of the request's Redis calls (backlog probe, rate limiter, enqueue) held the
request for a minute and a half, then answered 202. And what a 503 may have left behind
(the command was on the socket when the client gave up, and Redis runs it once it wakes)
must not count twice when the client sends the event again.
"""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import falcon.testing
import pytest
from dramatiq import Worker

from analytics.adapters.embedded_redis import RedisServerProcess
from analytics.bootstrap import Container, bootstrap
from analytics.entrypoints.actors import register_actors
from analytics.entrypoints.api.app import create_wsgi_app
from analytics.settings import Settings
from tests.support import wait_until

# The stall lasts until the request is answered, or this long: many times what the request
# may take with these settings (backlog probe and rate limiter 0.5 s each, enqueue 1 s, a
# send in flight 1 s more). A request still waiting then sees Redis answer, and its 202
# fails the test; before the fix that took 28 s here.
RESUME_AFTER_S = 10.0


@pytest.fixture
def container(own_redis: RedisServerProcess, data_dir: Path) -> Iterator[Container]:
    settings = Settings.from_env({
        "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(own_redis.port),
        "ANALYTICS_NAMESPACE": f"t-{uuid.uuid4().hex[:8]}",
        "ANALYTICS_DATA_DIR": str(data_dir), "ANALYTICS_STORAGE": "sqlite",
        "ANALYTICS_REDIS_TIMEOUT_S": "1", "ANALYTICS_ENQUEUE_TIMEOUT_S": "1",
        "ANALYTICS_AUTH": "disabled",  # the rate limiter (per address) still asks Redis
    })  # fmt: skip
    c = bootstrap(settings)
    register_actors(c)
    yield c
    c.broker.close()


@contextmanager
def stalled_redis(server: RedisServerProcess) -> Iterator[None]:
    """Redis stopped (SIGSTOP) for the block, and resumed at its end or after
    RESUME_AFTER_S, whichever comes first."""
    assert server.proc is not None
    pid = server.proc.pid
    os.kill(pid, signal.SIGSTOP)
    safety = threading.Timer(RESUME_AFTER_S, os.kill, (pid, signal.SIGCONT))
    safety.start()
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
        safety.cancel()


def post(client: falcon.testing.TestClient, event_id: str) -> falcon.testing.Result:
    return client.simulate_post("/api/v1/analytics/events", json={
        "event_type": "purchase", "user_id": "u1", "session_id": "s1", "product_id": "p1",
        "price": "10.00", "currency": "EUR", "event_id": event_id})  # fmt: skip


def test_ingest_answers_503_while_redis_is_stalled_and_a_retry_counts_once(
    own_redis: RedisServerProcess, container: Container
) -> None:
    client = falcon.testing.TestClient(create_wsgi_app(container))  # the lane, as served
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    assert post(client, first).status_code == 202
    with stalled_redis(own_redis):
        stalled = post(client, second)
    # Before the fix: held until Redis resumed, then 202.
    assert stalled.status_code == 503, stalled.text
    assert stalled.headers["Content-Type"] == "application/problem+json"
    assert int(stalled.headers["Retry-After"]) >= 1
    assert "same event_id" in stalled.json["detail"], stalled.json  # how to retry safely
    assert "socket" not in stalled.json["detail"].lower()  # redis-py's words go to the log
    # The client sends the event again once Redis answers (the breaker may still be
    # open for its reset time: the client honours Retry-After).
    wait_until(lambda: post(client, second).status_code == 202, timeout=30, interval=0.2,
               message="ingest never accepted the event again")  # fmt: skip
    worker = Worker(container.broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        wait_until(lambda: container.event_repo.count() == 2, timeout=30,
                   message="the two accepted events were not both stored")  # fmt: skip
        container.broker.join("high_priority", timeout=30_000)  # every message, the
        worker.join()  # stalled request's own included if Redis ran it on waking
    finally:
        worker.stop()
    assert container.event_repo.count() == 2
    today = container.clock.now().date()
    answer = client.simulate_get("/api/v1/analytics/aggregations/day", params={
        "start": today.isoformat(), "end": (today + timedelta(days=1)).isoformat()})  # fmt: skip
    assert answer.status_code == 200, answer.text
    (bucket,) = [b for b in answer.json["buckets"] if b["count"]]
    assert bucket["count"] == 2
    assert bucket["revenue"] == {"EUR": "20.00"}


def test_a_query_meets_a_stalled_cache_with_a_side_calls_timeout(
    own_redis: RedisServerProcess, data_dir: Path
) -> None:
    """The dashboard's cache lookups and stores against a stalled Redis: each gives up
    after the side-call timeout and the answer comes from storage. With the broker's own
    socket timeout (30 s here, 5 s by default) the lookup would wait out the whole stall,
    then succeed: no cache error, which is what fails this test."""
    settings = Settings.from_env({
        "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(own_redis.port),
        "ANALYTICS_NAMESPACE": f"t-{uuid.uuid4().hex[:8]}",
        "ANALYTICS_DATA_DIR": str(data_dir), "ANALYTICS_STORAGE": "sqlite",
        "ANALYTICS_REDIS_TIMEOUT_S": "30", "ANALYTICS_AUTH": "disabled",
        "ANALYTICS_RATE_LIMIT": "disabled", "ANALYTICS_LOCAL_CACHE_ENTRIES": "0",
    })  # fmt: skip
    c = bootstrap(settings)
    try:
        client = falcon.testing.TestClient(create_wsgi_app(c))
        assert client.simulate_get("/api/v1/analytics/dashboard/metrics").status_code == 200
        errors = c.cache.errors
        with stalled_redis(own_redis):
            answer = client.simulate_get("/api/v1/analytics/dashboard/metrics",
                                         params={"last": "24h"})  # fmt: skip
            stalled_errors = c.cache.errors - errors
        assert answer.status_code == 200, answer.text
        assert stalled_errors >= 1  # the lookup timed out instead of waiting out the stall
    finally:
        c.broker.close()
