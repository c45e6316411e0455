"""Repeated closed-period aggregation requests, answered whole from the in-process level.

A request whose buckets have all ended (a closed period) can only change when a late event
or a reconcile bumps the version of a UTC day it covers. So its finished JSON document is
kept in the in-process LRU under a key made of the request and the current versions of
those days, read from the shared cache (Redis) on every request: a bump changes the key,
and the next request recomputes (bucket by bucket, through the shared cache). When the
versions cannot be read (Redis down, cache breaker open) the local level is not used.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import msgspec

from analytics.application.queries import (
    AggregationQuery,
    QueryDeps,
    parse_aggregation_query,
    query_aggregations,
)
from analytics.domain.buckets import utc_days
from analytics.domain.ports import LocalDocuments

_encode = msgspec.json.Encoder().encode


def _days(q: AggregationQuery) -> list[str]:
    return utc_days(q.buckets[0].start, q.buckets[-1].end)


@functools.lru_cache(maxsize=128)  # <= 128 x max_buckets bucket objects
def _parse(period: str, params: tuple[tuple[str, str], ...], max_buckets: int) -> AggregationQuery:
    return parse_aggregation_query(period, dict(params), max_buckets=max_buckets)


def parse_query(period: str, params: Mapping[str, object], *, max_buckets: int) -> AggregationQuery:
    """``parse_aggregation_query``, memoized: a pure function of the request's parameters
    (building hundreds of tz-aware buckets is most of a repeated request's cost). Invalid
    parameters raise every time (exceptions are not cached); repeated ones are left to
    the parser, which names them."""
    if all(isinstance(v, str) for v in params.values()):
        items = tuple(sorted((k, str(v)) for k, v in params.items()))
        return _parse(period, items, max_buckets)
    return parse_aggregation_query(period, params, max_buckets=max_buckets)


def is_closed(q: AggregationQuery, deps: QueryDeps) -> bool:
    return q.buckets[-1].end <= deps.clock.now()


def aggregation_document(q: AggregationQuery, *, deps: QueryDeps) -> bytes:
    """The aggregation response as JSON bytes, from the in-process level when it can be."""
    cache = deps.cache
    if cache is None or not is_closed(q, deps) or not hasattr(cache, "get_local"):
        return _encode(query_aggregations(q, deps=deps))
    local: LocalDocuments = cache  # type: ignore[assignment]
    days = _days(q)
    versions = cache.versions(days)
    if versions is None:
        return _encode(query_aggregations(q, deps=deps))
    key = "aggdoc:" + "|".join(
        [q.period.value, q.start.isoformat(), q.end.isoformat(), q.tz_name, q.event_type or "",
         ".".join(str(v) for v in versions)]
    )  # fmt: skip
    found = local.get_local(key)
    if found is not None:
        return found
    data = _encode(query_aggregations(q, deps=deps))
    local.put_local(key, data, deps.limits.ttl_closed_s)
    return data
