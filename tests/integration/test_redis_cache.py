"""The Redis cache adapter against a real Redis: bulk ops, versions, counters, outages."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from falcon import testing
from redis.backoff import NoBackoff
from redis.retry import Retry

from analytics.adapters.embedded_redis import RedisServerProcess
from analytics.adapters.redis_cache import RedisCache
from analytics.application.store_events import store_events
from analytics.bootstrap import bootstrap
from analytics.domain.clock import FixedClock
from analytics.domain.errors import CacheUnavailable
from analytics.entrypoints.api.app import create_app
from analytics.settings import Settings
from tests.aggsupport import make_event
from tests.conftest import RedisInfo

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)


@pytest.fixture
def cache(redis_server: RedisInfo, namespace: str) -> RedisCache:
    return RedisCache(redis_server.client(), namespace=namespace)


def test_bulk_get_set_and_hit_miss_counters(cache: RedisCache, redis_server: RedisInfo,
                                            namespace: str) -> None:  # fmt: skip
    assert cache.get_many(["a", "b"]) == [None, None]
    cache.set_many([("a", b"1", 60), ("b", b"2", 5)])
    assert cache.get_many(["a", "b", "c"]) == [b"1", b"2", None]
    assert (cache.hits, cache.misses, cache.errors) == (2, 3, 0)
    client = redis_server.client()
    assert 55 <= client.ttl(f"{namespace}:cache:v:a") <= 60
    assert 0 < client.ttl(f"{namespace}:cache:v:b") <= 5
    assert all(k.startswith(namespace.encode()) for k in client.keys(f"{namespace}*"))


def test_versions_and_bump(cache: RedisCache) -> None:
    before = cache.versions(["2026-03-30", "2026-03-31"])
    assert before is not None and all(v > 0 for v in before)
    cache.bump(["2026-03-31", "2026-03-31"])
    assert cache.versions(["2026-03-30", "2026-03-31"]) == [before[0], before[1] + 2]
    assert cache.versions([]) == []


def test_a_redis_that_lost_its_versions_never_revives_an_old_key(
    cache: RedisCache, redis_server: RedisInfo, namespace: str
) -> None:
    """Versions restart from the current time, so no key of an earlier Redis life (which
    an API process may still hold locally) is ever current again."""
    client = redis_server.client()
    seen: set[str] = set()
    for _life in range(3):
        for _ in range(3):
            found = cache.lookup([("dash", ["2026-03-31"])])
            assert found is not None
            key = found[0][0]
            assert key not in seen
            seen.add(key)
            versions = cache.versions(["2026-03-31", "2026-03-30"])
            assert versions is not None and key == f"dash:{versions[0]}"
            cache.bump(["2026-03-31"])
        client.delete(*client.keys(f"{namespace}:cache:ver:*"))  # Redis lost its data
    cache.bump(["2026-03-29"])  # a bump of a day never read starts it too
    assert cache.versions(["2026-03-29"])[0] > 1  # type: ignore[index]


class CountingConnection(redis.Connection):
    """Counts writes to the socket: one per round trip (a pipeline is one write)."""

    writes = 0

    def send_packed_command(self, command: object, check_health: bool = True) -> None:
        CountingConnection.writes += 1
        super().send_packed_command(command, check_health)  # type: ignore[arg-type]


def test_bulk_operations_are_one_round_trip_each(redis_server: RedisInfo, namespace: str) -> None:
    pool = redis.ConnectionPool(
        connection_class=CountingConnection, host=redis_server.host, port=redis_server.port
    )
    cache = RedisCache(redis.Redis(connection_pool=pool), namespace=namespace)
    cache.client.ping()  # connect (and handshake) before counting: the pool's connection
    cache.versions(["2026-02-28"])  # and this thread's own one for reads
    CountingConnection.writes = 0
    cache.set_many([(f"k{i}", b"x", 60) for i in range(200)])
    assert CountingConnection.writes == 1
    assert cache.get_many([f"k{i}" for i in range(200)]) == [b"x"] * 200
    assert CountingConnection.writes == 2
    cache.bump([f"2026-03-{d:02d}" for d in range(1, 29)])
    bumped = cache.versions([f"2026-03-{d:02d}" for d in range(1, 29)])
    assert bumped is not None and len(set(bumped)) == 1  # started together, bumped once
    assert CountingConnection.writes == 4
    assert cache.hits == 200


def test_queries_answer_from_storage_when_redis_is_down(
    own_redis: RedisServerProcess, tmp_path: Path
) -> None:
    settings = Settings(
        auth="disabled",
        storage="sqlite", data_dir=tmp_path / "data", broker="stub", cache_backend="redis",
        REDIS_HOST="127.0.0.1", REDIS_PORT=own_redis.port, namespace="outage",
        redis_timeout_s=0.5, cache_retry_after_s=60,
    )  # fmt: skip
    c = bootstrap(settings, clock=FixedClock(NOW))
    assert isinstance(c.cache, RedisCache)
    client = testing.TestClient(create_app(c))
    store_events([make_event(NOW - timedelta(minutes=3))], repo=c.event_repo,
                 aggregates=c.aggregates, cache=c.cache)  # fmt: skip
    dash = "/api/v1/analytics/dashboard/metrics"
    assert client.simulate_get(dash, params={"last": "15m"}).json["total_events"] == 1
    assert client.simulate_get(dash, params={"last": "15m"}).json["total_events"] == 1
    assert c.cache.hits == 1
    own_redis.stop()
    # the worker counts the event but cannot invalidate: it fails so the message is
    # retried; the API cannot read the cache and answers from storage
    late = make_event(NOW - timedelta(minutes=2))
    with pytest.raises(CacheUnavailable):
        store_events([late], repo=c.event_repo, aggregates=c.aggregates, cache=c.cache)
    resp = client.simulate_get(dash, params={"last": "15m"})
    assert resp.status_code == 200 and resp.json["total_events"] == 2
    agg = client.simulate_get(
        "/api/v1/analytics/aggregations/hour",
        params={"start": "2026-03-31T11:00:00Z", "end": "2026-03-31T12:00:00Z"},
    )
    assert agg.status_code == 200 and agg.json["buckets"][0]["count"] == 2
    assert c.cache.errors >= 1
    with pytest.raises(redis.ConnectionError):
        c.cache.client.ping()
    # Redis is back (with its AOF: the old dashboard value survived); the retried message
    # invalidates, and the next answer is fresh
    own_redis.start()
    c.cache._down_until = 0.0
    assert store_events([late], repo=c.event_repo, aggregates=c.aggregates,
                        cache=c.cache).counted == 0  # fmt: skip
    assert client.simulate_get(dash, params={"last": "15m"}).json["total_events"] == 2


def test_lookup_resolves_versioned_keys_in_one_round_trip(
    redis_server: RedisInfo, namespace: str
) -> None:
    pool = redis.ConnectionPool(
        connection_class=CountingConnection, host=redis_server.host, port=redis_server.port
    )
    cache = RedisCache(redis.Redis(connection_pool=pool), namespace=namespace)
    entries = [("a", ["2026-03-30", "2026-03-31"]), ("b", ["2026-03-31"]), ("c", [])]
    first = cache.lookup(entries)
    v30, v31 = cache.versions(["2026-03-30", "2026-03-31"])  # type: ignore[misc]
    assert first == [(f"a:{v30}.{v31}", None), (f"b:{v31}", None), ("c:", None)]
    cache.set_many([(k, k.encode(), 60) for k, _ in first])
    CountingConnection.writes = 0
    assert cache.lookup(entries) == [(k, k.encode()) for k, _ in first]
    assert CountingConnection.writes == 1  # EVALSHA (the script is loaded already)
    cache.bump(["2026-03-31"])
    assert cache.lookup(entries) == [
        (f"a:{v30}.{v31 + 1}", None),
        (f"b:{v31 + 1}", None),
        ("c:", b"c:"),
    ]
    assert (cache.hits, cache.misses) == (4, 5)


def test_lookup_held_confirms_a_current_key_without_sending_the_value(
    cache: RedisCache,
) -> None:
    entries = [("a", ["2026-03-31"]), ("b", ["2026-03-31"])]
    (ka, _), (kb, _) = cache.lookup(entries)  # type: ignore[misc]
    cache.set_many([(ka, b"A", 60), (kb, b"B", 60)])
    assert cache.lookup_held(entries, [ka, None]) == [(ka, True), (kb, b"B")]
    assert cache.lookup_held(entries, ["a:7", kb]) == [(ka, b"A"), (kb, True)]
    (v,) = cache.versions(["2026-03-31"])  # type: ignore[misc]
    cache.bump(["2026-03-31"])
    assert cache.lookup_held(entries, [ka, kb]) == [(f"a:{v + 1}", None), (f"b:{v + 1}", None)]


def test_lookup_connection_survives_a_flushed_script_cache_and_a_killed_connection(
    own_redis: RedisServerProcess,
) -> None:
    """Lookups run on a connection of their own per thread: an unknown script is loaded
    again, a dropped connection is replaced (one retry), and neither counts as an error."""
    client = redis.Redis(host="127.0.0.1", port=own_redis.port)
    cache = RedisCache(client, namespace="own")
    entries = [("a", ["2026-03-31"])]
    ((key, value),) = cache.lookup(entries)  # type: ignore[misc]
    assert value is None and key.startswith("a:")
    client.script_flush()  # as after a Redis restart
    assert cache.lookup(entries) == [(key, None)]
    client.client_kill_filter(_type="normal", skipme=True)  # the lookup connection is gone
    cache.set_many([(key, b"A", 60)])
    assert cache.lookup(entries) == [(key, b"A")]
    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.lookup(entries))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [[(key, b"A")]] * 4
    assert cache.errors == 0


def test_after_a_redis_error_the_cache_is_skipped_for_retry_after(
    own_redis: RedisServerProcess, namespace: str
) -> None:
    """Mutation QA: one Redis error opens the cache's own short circuit: for
    ``retry_after_s`` reads and writes skip Redis (misses, answered from storage) instead
    of each waiting for a dead Redis (connect + timeout on every query of an outage).
    ``bump`` is exempt: an invalidation is always tried."""
    client = redis.Redis(host="127.0.0.1", port=own_redis.port, socket_timeout=0.5,
                         retry=Retry(NoBackoff(), 0))  # fmt: skip
    cache = RedisCache(client, namespace=namespace, retry_after_s=3600)
    cache.set_many([("a", b"1", 60)])
    assert cache.get_many(["a"]) == [b"1"] and cache.errors == 0
    own_redis.stop()
    assert cache.get_many(["a"]) == [None]
    assert cache.errors == 1  # the circuit opens
    assert cache.get_many(["a", "b"]) == [None, None]
    assert cache.versions(["2026-03-31"]) is None
    assert cache.lookup([("agg:x", ["2026-03-31"])]) is None
    cache.set_many([("c", b"3", 60)])
    assert cache.errors == 1  # none of them tried Redis
    assert cache.misses == 1 + 2 + 1  # get_many, get_many, lookup
    with pytest.raises(CacheUnavailable):
        cache.bump(["2026-03-31"])  # tried even with the circuit open
    assert cache.errors == 2
    own_redis.start()
    cache._down_until = 0.0  # retry_after_s has passed
    assert cache.get_many(["a"]) == [b"1"] and cache.errors == 2
