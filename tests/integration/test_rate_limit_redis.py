"""The Redis limiter: one budget shared by every process, atomic, failing open; the backlog probe."""

from __future__ import annotations

from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from redis.backoff import NoBackoff
from redis.retry import Retry

from analytics.adapters.backlog import DrainCounter, RedisBacklog
from analytics.adapters.embedded_redis import RedisServerProcess
from analytics.adapters.redis_ratelimit import RedisRateLimiter
from analytics.domain.ratelimit import Quota
from tests.conftest import RedisInfo
from tests.support import ApiHarness, free_port, wait_until

pytestmark = pytest.mark.integration
SLOW = Quota(rate_per_minute=1, burst=10)  # no refill to speak of during a test
EVENT = {"event_type": "page_view", "user_id": "u1", "session_id": "s1"}


def test_two_workers_share_one_budget(redis_server: RedisInfo, namespace: str) -> None:
    a = RedisRateLimiter(redis_server.client(), namespace)
    b = RedisRateLimiter(redis_server.client(), namespace)
    results = [(a if i % 2 else b).hit("key:k1", 1, SLOW).allowed for i in range(11)]
    assert results == [True] * 10 + [False]
    denied = a.hit("key:k1", 1, SLOW)
    assert not denied.allowed and denied.retry_after_s >= 1 and denied.remaining == 0
    assert b.hit("key:k2", 10, SLOW).allowed  # buckets are per key
    assert not b.hit("key:k3", 11, SLOW).allowed  # a cost above the burst never fits
    keys = [k.decode() for k in redis_server.client().scan_iter(match=f"{namespace}:ratelimit:*")]
    assert sorted(keys) == [f"{namespace}:ratelimit:key:k1", f"{namespace}:ratelimit:key:k2"]
    assert all(redis_server.client().pttl(k) > 0 for k in keys)  # buckets expire


ODD_QUOTAS = [(12345, 60), (7, 3), (333, 100), (9000, 500), (7000, 2000), (100_000, 5000)]


@pytest.mark.parametrize(("rate", "burst"), ODD_QUOTAS)
def test_a_full_bucket_admits_exactly_its_burst(
    redis_server: RedisInfo, namespace: str, rate: int, burst: int
) -> None:
    """Ingest charges a batch as 1 unit, then the rest. With the interval 60000/rate as a
    float, a batch of exactly the burst was refused in 16 of 20 fresh buckets at 12345/min
    (the sum came out a few ulps over): only a batch larger than the burst may be."""
    limiter = RedisRateLimiter(redis_server.client(), namespace)
    quota = Quota(rate_per_minute=rate, burst=burst)
    for n in range(20):
        assert limiter.hit(f"two:{n}", 1, quota).allowed
        assert limiter.hit(f"two:{n}", burst - 1, quota).allowed, (rate, burst, n)
        assert limiter.hit(f"one:{n}", burst, quota).allowed, (rate, burst, n)
        assert not limiter.hit(f"over:{n}", burst + 1, quota).allowed


def test_apps_sharing_redis_share_the_budget(redis_server: RedisInfo, namespace: str) -> None:
    first = ApiHarness(rate_limiter=RedisRateLimiter(redis_server.client(), namespace))
    second = ApiHarness(
        rate_limiter=RedisRateLimiter(redis_server.client(), namespace), api_keys=first.keys
    )
    key = {"X-API-Key": first.key("ingest", rate_per_minute=1, burst=300)}
    r = first.client.simulate_post("/api/v1/analytics/events/batch", json={"events": [EVENT] * 200}, headers=key)
    assert r.status_code == 202 and r.headers["ratelimit-remaining"] == "100"
    r = second.client.simulate_post("/api/v1/analytics/events/batch", json={"events": [EVENT] * 101}, headers=key)
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    r = second.client.simulate_post("/api/v1/analytics/events/batch", json={"events": [EVENT] * 99}, headers=key)
    assert r.status_code == 202 and r.headers["ratelimit-remaining"] == "0"


def test_fails_open_when_redis_is_down(tmp_path: Path) -> None:
    server = RedisServerProcess(tmp_path / "r", port=free_port()).start()
    client = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=1,
                         socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))  # fmt: skip
    limiter = RedisRateLimiter(client, "t", retry_after_failure_s=3600)
    assert limiter.hit("key:k", 10, SLOW).allowed
    assert not limiter.hit("key:k", 1, SLOW).allowed
    server.stop()
    assert limiter.hit("key:k", 1, SLOW).allowed  # fail open, logged
    h = ApiHarness(rate_limiter=limiter)
    r = h.client.simulate_post("/api/v1/analytics/events", json=EVENT, headers=h.headers())
    assert r.status_code == 202 and "ratelimit-limit" not in r.headers


def test_backlog_depth_and_measured_drain_rate(redis_server: RedisInfo, namespace: str) -> None:
    client = redis_server.client()
    broker = RedisBroker(client=client, namespace=namespace, heartbeat_timeout=5000)
    broker.add_middleware(DrainCounter(client, namespace))
    drained = f"{namespace}:stats:high_priority:drained"
    done: list[int] = []

    @dramatiq.actor(queue_name="high_priority", broker=broker, actor_name="noop")
    def noop(i: int) -> None:
        done.append(i)

    for i in range(30):
        noop.send(i)
    backlog = RedisBacklog(client, namespace, cache_s=0)
    assert backlog.depth() == 30
    assert backlog.drain_rate() is None  # nothing drained yet
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        broker.join("high_priority", timeout=20_000)
        worker.join()
        # Counted in memory, added to Redis every half second while the worker runs.
        wait_until(lambda: int(client.get(drained) or 0) == 30, timeout=10)
    finally:
        worker.stop()
    assert sorted(done) == list(range(30))
    assert backlog.depth() == 0
    assert int(client.get(drained)) == 30  # and nothing more at shutdown
    rate = backlog.drain_rate()
    assert rate is not None and rate > 0


def test_a_bucket_whose_tat_lies_in_the_past_is_full_not_overfull(
    redis_server: RedisInfo, namespace: str
) -> None:
    """Mutation QA: a bucket's key outlives its theoretical arrival time (TAT) by a second,
    so an idle client's TAT is in the past when its next request comes. The script clamps
    it to now: without that, the idle time past a full bucket counted as extra credit, and
    a client admitted more than its burst at once (here a batch of burst + 1, and a
    ``RateLimit-Remaining`` above the limit)."""
    client = redis_server.client()
    limiter = RedisRateLimiter(client, namespace)
    quota = Quota(rate_per_minute=240, burst=2)  # one unit every 250 ms
    seconds, micros = client.time()  # the script's clock: Redis TIME
    now_ms = seconds * 1000 + micros // 1000
    # Its TAT as the script leaves it, 990 ms after it passed (the key would expire 10 ms
    # later: a longer TTL here, so the test does not race that expiry).
    client.set(f"{namespace}:ratelimit:key:idle", now_ms - 990, px=60_000)
    over = limiter.hit("key:idle", quota.burst + 1, quota)
    assert not over.allowed  # more than the burst never fits, however long the idle time
    full = limiter.hit("key:idle", 1, quota)
    assert full.allowed and full.remaining == quota.burst - 1
