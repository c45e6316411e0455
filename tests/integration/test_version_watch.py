"""Cache versions held in-process (Redis client-side caching), against a real Redis.

The warm dashboard answer costs one read of the day versions; ``VersionWatch`` answers it
from memory while Redis's invalidation messages say nothing changed. These tests hold it
to the rule the whole cache rests on: once a bump has returned, no process answers the
version it replaced.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis

from analytics.adapters.embedded_redis import RedisServerProcess
from analytics.adapters.redis_cache import RedisCache, VersionWatch
from tests.conftest import RedisInfo

pytestmark = pytest.mark.integration

DAYS = ["2026-03-30", "2026-03-31"]


def mget_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_mget", {}).get("calls", 0))


@pytest.fixture
def private(own_redis: RedisServerProcess) -> redis.Redis:
    return own_redis.client()


def watched(client: redis.Redis, namespace: str = "ns", hold_s: float = 60.0) -> RedisCache:
    return RedisCache(client, namespace=namespace, version_hold_s=hold_s)


def test_unchanged_versions_are_answered_without_a_round_trip(private: redis.Redis) -> None:
    cache = watched(private)
    first = cache.versions(DAYS)
    first = cache.versions(DAYS)  # the first read of a day starts it: that one is not kept
    reads = mget_calls(private)
    for _ in range(50):
        assert cache.versions(DAYS) == first
    assert mget_calls(private) == reads, "held versions went to Redis anyway"
    assert cache.versions([DAYS[0]]) == first[:1]
    assert mget_calls(private) == reads


def test_a_bump_by_anyone_is_seen_by_the_very_next_read(redis_server: RedisInfo, namespace: str) -> None:  # fmt: skip
    """The worker bumps through its own connection; the API's next read must see it, with
    no pause in between, every time."""
    reader = watched(redis_server.client(), namespace)
    writer = RedisCache(redis_server.client(), namespace=namespace)
    reader.versions(DAYS)
    for i in range(300):
        before = reader.versions(DAYS)
        assert before is not None
        writer.bump([DAYS[i % 2]])
        after = reader.versions(DAYS)
        expected = list(before)
        expected[i % 2] += 1
        assert after == expected, f"round {i}: stale version after a bump"


def test_bumps_racing_with_reads_from_many_threads_never_leave_a_stale_version(
    redis_server: RedisInfo, namespace: str
) -> None:
    reader = watched(redis_server.client(), namespace)
    writer = RedisCache(redis_server.client(), namespace=namespace)
    reader.versions(DAYS)
    stop = threading.Event()
    errors: list[BaseException] = []

    def read_forever() -> None:
        try:
            while not stop.is_set():
                reader.versions(DAYS)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read_forever) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(100):
            writer.bump([DAYS[i % 2]])
            truth = [int(v) for v in redis_server.client().mget(
                [f"{namespace}:cache:ver:{d}" for d in DAYS])]  # fmt: skip
            assert reader.versions(DAYS) == truth, f"round {i}"
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors


def test_a_read_that_overlaps_a_change_is_not_kept(private: redis.Redis) -> None:
    watch = VersionWatch(private, "ns:cache:ver:", hold_s=60)
    keys = ["ns:cache:ver:" + d for d in DAYS]
    private.mset({k: 1 for k in keys})
    token = watch.mark()
    assert token is not None
    old = [int(v) for v in private.mget(keys)]  # the read...
    private.incr(keys[0])  # ...and a change that Redis announces after it
    watch.keep(token, keys, old)
    assert watch.get(keys) is None, "a version read before a change was kept"
    token = watch.mark()
    watch.keep(token, keys, [int(v) for v in private.mget(keys)])
    assert watch.get(keys) == [2, 1]


def test_flush_expiry_and_the_hold_limit_drop_what_is_held(private: redis.Redis) -> None:
    watch = VersionWatch(private, "ns:cache:ver:", hold_s=60)
    key = "ns:cache:ver:" + DAYS[0]
    private.set(key, 5)
    watch.keep(watch.mark(), [key], [5])
    assert watch.get([key]) == [5]
    private.flushdb()  # this test's own redis-server
    assert watch.get([key]) is None
    private.set(key, 6, px=50)
    watch.keep(watch.mark(), [key], [6])
    assert watch.get([key]) == [6]
    time.sleep(0.2)
    private.get(key)  # an access makes Redis notice the expiry (lazy expiry)
    assert watch.get([key]) is None, "an expired version was still held"
    short = VersionWatch(private, "ns:cache:ver:", hold_s=0.05)
    private.set(key, 7)
    short.keep(short.mark(), [key], [7])
    assert short.get([key]) == [7]
    time.sleep(0.1)
    assert short.get([key]) is None, "held longer than hold_s"


def test_a_lost_watch_falls_back_to_reading_then_watches_again(own_redis: RedisServerProcess) -> None:  # fmt: skip
    client = own_redis.client()
    cache = watched(client)
    cache.versions(DAYS)
    held = cache.versions(DAYS)
    assert cache.watch is not None and cache.watch.get(["ns:cache:ver:" + d for d in DAYS])
    # The watch connection is killed (as a restart or a network fault would): nothing held
    # may be answered any more, and versions keep coming from Redis meanwhile.
    cache.watch.retry_s = 0  # watch again at once (default: a second later)
    client.client_kill_filter(_type="pubsub")
    client.incr("ns:cache:ver:" + DAYS[0])  # a change whose message can no longer arrive
    reads = mget_calls(client)
    assert cache.versions(DAYS) == [held[0] + 1, held[1]]  # read from Redis, watched again
    assert mget_calls(client) == reads + 1
    reads = mget_calls(client)
    assert cache.versions(DAYS) == [held[0] + 1, held[1]]
    assert mget_calls(client) == reads, "the watch was not re-established"
    # A restarted Redis (here with its AOF, versions intact) is watched again as well.
    own_redis.stop()
    assert cache.versions(DAYS) is None  # down: no answer from memory either
    own_redis.start()
    cache._down_until = 0  # noqa: SLF001 - skip the adapter's own pause after an error
    time.sleep(0.01)
    assert cache.versions(DAYS) == [held[0] + 1, held[1]]


def test_a_redis_that_refuses_tracking_is_read_every_time(private: redis.Redis, own_redis: RedisServerProcess) -> None:  # fmt: skip
    """Managed Redis services often deny ``CLIENT``: then every read goes to Redis."""
    private.acl_setuser("app", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                        commands=["+@all", "-client"])  # fmt: skip
    restricted = redis.Redis(host="127.0.0.1", port=own_redis.port, username="app", password="pw")  # noqa: S106
    cache = watched(restricted)
    first = cache.versions(DAYS)
    reads = mget_calls(private)
    for _ in range(3):
        assert cache.versions(DAYS) == first
    assert mget_calls(private) == reads + 3
    assert cache.watch is not None and cache.watch.supported is False
    private.incr("ns:cache:ver:" + DAYS[1])
    assert cache.versions(DAYS) == [first[0], first[1] + 1]
