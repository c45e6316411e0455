"""Cache warm-up (a scheduler job): compute what dashboards ask for before they ask.

Closed hourly buckets of the last two days and daily buckets of the last month are
cached for a day (``ttl_closed_s``; an hour, ``ttl_today_s``, for those on the current UTC
day, whose version moves with every worker round), so after the first run almost every later run is a
cache hit costing one round trip; the dashboard's own windows (``last=15m|1h|24h|7d``)
are cached briefly (``ttl_dashboard_s``) and are refreshed by each run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from analytics.application.queries import (
    LAST_WINDOWS,
    QueryDeps,
    parse_aggregation_query,
    parse_dashboard_query,
    query_aggregations,
    query_dashboard,
)


@dataclass(frozen=True, slots=True)
class WarmupResult:
    queries: int
    cache_hits: int
    cache_misses: int

    def as_dict(self) -> dict[str, int]:
        return {"queries": self.queries, "cache_hits": self.cache_hits,
                "cache_misses": self.cache_misses}  # fmt: skip


def _z(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def warm_caches(*, deps: QueryDeps, hours: int = 48, days: int = 31) -> WarmupResult:
    """The ranges shrink to what a query may span (``ANALYTICS_AGGREGATION_MAX_BUCKETS``
    below 48 made every run fail, retried and dead-lettered): the latest buckets, as the
    dashboards that query under that limit ask for them."""
    hours = min(hours, deps.limits.max_buckets)
    days = min(days, deps.limits.max_buckets)
    now = deps.clock.now()
    hits0 = deps.cache.hits if deps.cache is not None else 0
    misses0 = deps.cache.misses if deps.cache is not None else 0
    hour = now.replace(minute=0, second=0, microsecond=0)
    day = hour.replace(hour=0)
    ranges = [
        ("hour", hour - timedelta(hours=hours), hour),
        ("day", day - timedelta(days=days), day),
    ]
    queries = 0
    for period, start, end in ranges:
        q = parse_aggregation_query(
            period, {"start": _z(start), "end": _z(end)}, max_buckets=deps.limits.max_buckets
        )
        query_aggregations(q, deps=deps)
        queries += 1
    for last in LAST_WINDOWS:
        dq = parse_dashboard_query(
            {"last": last}, now=now, max_window=deps.limits.dashboard_max_window
        )
        query_dashboard(dq, deps=deps)
        queries += 1
    return WarmupResult(
        queries=queries,
        cache_hits=(deps.cache.hits - hits0) if deps.cache is not None else 0,
        cache_misses=(deps.cache.misses - misses0) if deps.cache is not None else 0,
    )
