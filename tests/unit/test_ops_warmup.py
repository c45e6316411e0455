"""Cache warm-up: the first run fills the cache, the next one is answered from it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from analytics.adapters.memory import InMemoryAggregateStore, InMemoryCache
from analytics.application.queries import QueryDeps
from analytics.application.warmup import warm_caches
from analytics.bootstrap import bootstrap
from analytics.domain.aggregation import contribution
from analytics.domain.clock import FixedClock
from analytics.entrypoints.actors import register_actors
from analytics.settings import Settings
from tests.ops_support import make_events

pytestmark = pytest.mark.unit
NOW = datetime(2026, 3, 1, 10, 7, 30, tzinfo=UTC)


def test_second_run_is_served_from_the_cache() -> None:
    clock = FixedClock(NOW)
    aggregates = InMemoryAggregateStore()
    aggregates.apply([contribution(e) for e in make_events(5, at=NOW - timedelta(hours=3))])
    deps = QueryDeps(aggregates=aggregates, clock=clock, cache=InMemoryCache(clock))
    first = warm_caches(deps=deps)
    assert first.queries == 6 and first.cache_misses > 0
    second = warm_caches(deps=deps)
    assert second.cache_misses == 0 and second.cache_hits == first.cache_misses


@pytest.mark.parametrize("max_buckets", [1, 5, 47])
def test_a_bucket_limit_under_the_warmed_ranges_shrinks_them(max_buckets: int) -> None:
    """ANALYTICS_AGGREGATION_MAX_BUCKETS=5 (allowed: 1 and up): every run failed with
    BadQuery, was retried and dead-lettered (README walkthrough QA)."""
    clock = FixedClock(NOW)
    container = bootstrap(Settings(broker="stub", storage="memory", cache_backend="memory",
                                   aggregation_max_buckets=max_buckets), clock=clock)  # fmt: skip
    actor = register_actors(container)["warm_dashboard_cache"]
    assert actor.fn()["queries"] == 6


def test_the_actor_is_registered_on_its_queue_and_runs() -> None:
    clock = FixedClock(NOW)
    container = bootstrap(Settings(broker="stub", storage="memory", cache_backend="memory"),
                          clock=clock)  # fmt: skip
    actor = register_actors(container)["warm_dashboard_cache"]
    assert actor.queue_name == "aggregations"
    assert actor.fn()["queries"] == 6
