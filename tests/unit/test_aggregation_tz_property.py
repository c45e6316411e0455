"""Property: aggregation buckets in any zone count exactly the events a naive local
calendar puts in them (local date, ISO week, month, or local hour with its offset)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.adapters.memory import InMemoryAggregateStore
from analytics.application.queries import QueryDeps, parse_aggregation_query, query_aggregations
from analytics.domain.aggregation import contribution
from analytics.domain.clock import FixedClock
from tests.aggsupport import make_event

pytestmark = pytest.mark.unit

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Adelaide"]
# around the 2026 DST changes in Europe (Mar 29, Oct 25) and the US (Mar 8, Nov 1)
BASE = datetime(2026, 3, 6, tzinfo=UTC)


def local_key(dt: datetime, period: str, tz: ZoneInfo) -> object:
    local = dt.astimezone(tz)
    if period == "hour":
        return (local.replace(minute=0, second=0, microsecond=0).isoformat(),)
    d = local.date()
    if period == "day":
        return d
    if period == "week":
        return d - timedelta(days=d.weekday())
    return (d.year, d.month)


@settings(max_examples=60, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    period=st.sampled_from(["hour", "day", "week", "month"]),
    offsets=st.lists(st.integers(0, 60 * 24 * 240), min_size=1, max_size=60),
    day0=st.sampled_from([0, 20, 50, 230, 235]),
)
def test_buckets_match_a_naive_local_calendar(
    zone: str, period: str, offsets: list[int], day0: int
) -> None:
    tz = ZoneInfo(zone)
    start = BASE + timedelta(days=day0)
    span = {"hour": timedelta(days=3), "day": timedelta(days=20)}.get(period, timedelta(days=70))
    times = [start + timedelta(minutes=m % int(span / timedelta(minutes=1))) for m in offsets]
    agg = InMemoryAggregateStore()
    agg.apply([contribution(make_event(t, user=f"u{i % 4}")) for i, t in enumerate(times)])
    q = parse_aggregation_query(
        period,
        {"start": start.isoformat(), "end": (start + span).isoformat(), "tz": zone},
        max_buckets=5000,
    )
    out = query_aggregations(q, deps=QueryDeps(aggregates=agg, clock=FixedClock(BASE)))
    buckets = [msgspec.json.decode(b) for b in out.buckets]
    expected = Counter(local_key(t, period, tz) for t in times)
    got = {}
    for b in buckets:
        s = datetime.fromisoformat(b["start"])
        got[local_key(s, period, tz)] = b["count"]
        assert datetime.fromisoformat(b["end"]) > s
    assert sum(got.values()) == len(times)
    assert {k: v for k, v in got.items() if v} == dict(expected)
