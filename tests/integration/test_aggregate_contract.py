"""One contract for every AggregateStore (and the EventRepository range read it needs).

Parametrized over the in-memory fake and SQLite; a DynamoDB adapter joins by adding a
param to ``stores`` that yields (event repository, aggregate store).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from analytics.adapters.memory import InMemoryAggregateStore, InMemoryEventRepository
from analytics.adapters.sqlite_aggregates import SQLiteAggregateStore
from analytics.adapters.sqlite_store import SQLiteDatabase, SQLiteEventRepository
from analytics.domain.aggregation import (
    ALL_TYPES,
    COUNT,
    PRODUCT_REVENUE,
    PURCHASE,
    REVENUE,
    USER,
    USER_ALL,
    CounterKey,
    contribution,
    recompute,
)
from analytics.domain.buckets import MINUTE, QUARTER, Piece, cover, epoch_minute
from analytics.domain.ports import AggregateStore, EventRepository
from tests.aggsupport import make_event, purchase

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
M0 = epoch_minute(T0)


@pytest.fixture(params=["memory", "sqlite", "dynamodb"])
def stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[EventRepository, AggregateStore]]:
    if request.param == "dynamodb":
        from tests.aws_support import dynamodb_stores  # noqa: PLC0415

        yield dynamodb_stores(request.getfixturevalue("moto_server"))
    elif request.param == "memory":
        yield InMemoryEventRepository(), InMemoryAggregateStore()
    else:
        db = SQLiteDatabase(tmp_path / "events.sqlite3")
        yield SQLiteEventRepository(db), SQLiteAggregateStore(db)


def window(start: datetime, end: datetime) -> tuple[Piece, ...]:
    return cover(epoch_minute(start), epoch_minute(end))


def test_apply_counts_each_event_once(stores: tuple[EventRepository, AggregateStore]) -> None:
    _, agg = stores
    e = make_event(T0)
    assert agg.apply([contribution(e)]) == [e.event_id]
    assert agg.apply([contribution(e)]) == []
    assert agg.apply([contribution(e), contribution(e)]) == []
    [s] = agg.summarize([window(T0, T0 + timedelta(hours=1))], None)
    assert (s.count, s.unique_users, s.unique_sessions) == (1, 1, 1)


def test_summary_is_exact_over_minute_and_quarter_pieces(
    stores: tuple[EventRepository, AggregateStore],
) -> None:
    _, agg = stores
    events = [
        make_event(T0 + timedelta(minutes=3), user="a", session="s1"),
        make_event(T0 + timedelta(minutes=20), user="a", session="s2"),
        make_event(T0 + timedelta(minutes=44), user="b", session="s2", event_type="click"),
        purchase(T0 + timedelta(minutes=50), user="c", session="s3", price="0.10", quantity=3),
        purchase(
            T0 + timedelta(minutes=51), user="c", session="s3", price="19.999999", currency="USD"
        ),
        make_event(T0 + timedelta(hours=2), user="z"),
    ]
    agg.apply([contribution(e) for e in events])
    w_all = window(T0, T0 + timedelta(hours=1))
    w_edge = window(T0 + timedelta(minutes=3), T0 + timedelta(minutes=45))  # ragged edges
    w_none = window(T0 + timedelta(minutes=4), T0 + timedelta(minutes=20))
    s_all, s_edge, s_none = agg.summarize([w_all, w_edge, w_none], None)
    assert (s_all.count, s_all.unique_users, s_all.unique_sessions) == (5, 3, 3)
    assert s_all.revenue_micros == {"EUR": 300_000, "USD": 19_999_999}
    assert s_all.orders == {"EUR": 1, "USD": 1}
    assert (s_edge.count, s_edge.unique_users, s_edge.unique_sessions) == (3, 2, 2)
    assert (s_none.count, s_none.unique_users) == (0, 0)
    [clicks] = agg.summarize([w_all], "click")
    assert (clicks.count, clicks.unique_users, clicks.revenue_micros) == (1, 1, {})
    [buys] = agg.summarize([w_all], "purchase")
    assert (buys.count, buys.unique_sessions, buys.revenue_micros["EUR"]) == (2, 1, 300_000)



def test_revenue_and_orders_count_purchases_only(
    stores: tuple[EventRepository, AggregateStore],
) -> None:
    """Mutation QA: a priced event of another type (a cart add with its price) keeps
    revenue counters of its own type, but revenue and orders are purchases only, in every
    store: summing all types reported the cart as sales (22 EUR and 2 orders for one
    10 EUR purchase)."""
    _, agg = stores
    events = [
        purchase(T0 + timedelta(minutes=1), user="a", session="s1", price="10"),
        make_event(T0 + timedelta(minutes=2), event_type="add_to_cart", user="b", session="s2",
                   product="p9", price="12", currency="EUR"),  # fmt: skip
        make_event(T0 + timedelta(minutes=3), event_type="add_to_cart", user="b", session="s2",
                   product="p9", price="4", currency="USD"),  # fmt: skip
    ]
    agg.apply([contribution(e) for e in events])
    w = window(T0, T0 + timedelta(hours=1))
    [s_all] = agg.summarize([w], None)
    assert (s_all.count, s_all.revenue_micros, s_all.orders) == (3, {"EUR": 10_000_000},
                                                                  {"EUR": 1})  # fmt: skip
    [buys] = agg.summarize([w], PURCHASE)
    assert (buys.revenue_micros, buys.orders) == ({"EUR": 10_000_000}, {"EUR": 1})
    [carts] = agg.summarize([w], "add_to_cart")
    assert (carts.count, carts.revenue_micros, carts.orders) == (2, {}, {})
    assert agg.breakdown(w, top=3).top_by_revenue[0].revenue_micros == {"EUR": 10_000_000}


def test_breakdown_types_conversion_and_top_products(
    stores: tuple[EventRepository, AggregateStore],
) -> None:
    _, agg = stores
    events = [
        make_event(T0, product="p1", session="s1"),
        make_event(T0, product="p1", session="s2"),
        make_event(T0, product="p2", session="s3", event_type="click"),
        purchase(T0 + timedelta(minutes=1), product="p2", session="s3", price="5"),
        purchase(T0 + timedelta(minutes=2), product="p3", session="s3", price="7", quantity=2),
    ]
    agg.apply([contribution(e) for e in events])
    bd = agg.breakdown(window(T0, T0 + timedelta(hours=1)), top=2)
    assert bd.events_by_type == {"click": 1, "page_view": 2, "purchase": 2}
    assert bd.converted_sessions == 1
    assert [p.product_id for p in bd.top_by_count] == ["p1", "p2"]
    assert [p.product_id for p in bd.top_by_revenue] == ["p3", "p2"]
    assert bd.top_by_revenue[0].revenue_micros == {"EUR": 14_000_000}
    assert agg.breakdown((), top=3).events_by_type == {}


def test_snapshot_and_correct_round_trip(stores: tuple[EventRepository, AggregateStore]) -> None:
    _, agg = stores
    events = [make_event(T0 + timedelta(minutes=i), user=f"u{i % 3}") for i in range(40)]
    agg.apply([contribution(e) for e in events])
    s, e = M0, M0 + 60
    snap = agg.snapshot(s, e)
    assert snap.applied == {ev.event_id for ev in events}
    assert snap.counters == recompute(events)
    # damage one counter and one membership, then repair with the difference
    bad = {CounterKey(COUNT, QUARTER, M0, "page_view"): 5,
           CounterKey(USER, MINUTE, M0, "page_view", "ghost"): 1}  # fmt: skip
    agg.correct(bad)
    [damaged] = agg.summarize([cover(s, e)], None)
    # the ghost sits in a minute bucket, which this quarter-aligned window does not read
    assert (damaged.count, damaged.unique_users) == (45, 3)
    agg.correct({k: -v for k, v in bad.items()})
    assert agg.snapshot(s, e).counters == recompute(events)
    assert agg.snapshot(s + 60, e + 60).applied == set()


def test_unique_members_at_zero_are_not_counted(
    stores: tuple[EventRepository, AggregateStore],
) -> None:
    _, agg = stores
    typed = CounterKey(USER, MINUTE, M0 + 1, "page_view", "gone")
    untyped = CounterKey(USER_ALL, MINUTE, M0 + 1, ALL_TYPES, "gone")
    agg.correct({typed: 1, untyped: 1})
    window = [(Piece(MINUTE, M0, M0 + 15),)]
    assert agg.summarize(window, None)[0].unique_users == 1
    assert agg.summarize(window, "page_view")[0].unique_users == 1
    agg.correct({typed: -1, untyped: -1})
    assert agg.summarize(window, None)[0].unique_users == 0
    assert agg.summarize(window, "page_view")[0].unique_users == 0
    assert agg.snapshot(M0, M0 + 15).counters == {}


def test_repository_iter_range_is_ordered_and_half_open(
    stores: tuple[EventRepository, AggregateStore],
) -> None:
    repo, _ = stores
    ids = sorted(uuid.uuid4() for _ in range(5))
    same = [make_event(T0 + timedelta(minutes=10), event_id=i) for i in ids]
    others = [make_event(T0 + timedelta(minutes=m)) for m in (0, 9, 30, 60, 61)]
    repo.add_many([*others, *same])
    got = list(repo.iter_range(T0, T0 + timedelta(hours=1), page_size=2))
    assert [e.timestamp for e in got] == sorted(e.timestamp for e in got)
    assert len(got) == 8  # 0, 9, 10 x5, 30; 60 is the exclusive end
    tied = [e.event_id for e in got if e.timestamp == T0 + timedelta(minutes=10)]
    assert [str(i) for i in tied] == sorted(str(i) for i in ids)


def test_revenue_sums_stay_exact_past_64_bits(stores: tuple[EventRepository, AggregateStore]) -> None:
    """A window whose revenue passes 2^63 micros (9.2 * 10^12 EUR) though each counter
    stays below it: SQLite's SUM raised 'integer overflow' there, a 500, and enough of
    them opened the storage breaker for every read. Every store answers exactly."""
    _, agg = stores
    big = 5 * 10**18  # each below 2^63 - 1 = 9,223,372,036,854,775,807
    agg.correct({
        CounterKey(REVENUE, MINUTE, M0, PURCHASE, "EUR"): big,
        CounterKey(REVENUE, MINUTE, M0 + 1, PURCHASE, "EUR"): big,
        CounterKey(PRODUCT_REVENUE, MINUTE, M0, PURCHASE, "p1", "EUR"): big,
        CounterKey(PRODUCT_REVENUE, MINUTE, M0 + 1, PURCHASE, "p1", "EUR"): big,
    })  # fmt: skip
    two_minutes = window(T0, T0 + timedelta(minutes=2))
    [s] = agg.summarize([two_minutes], None)
    assert s.revenue_micros == {"EUR": 2 * big}
    b = agg.breakdown(two_minutes, top=3)
    assert [(p.product_id, p.revenue_micros) for p in b.top_by_revenue] == [("p1", {"EUR": 2 * big})]


def test_a_failing_sqlite_read_is_storage_unavailable_not_a_crash(tmp_path: Path) -> None:
    """A read that SQLite refuses (disk I/O error, a corrupt page...) becomes
    StorageUnavailable, which the API answers 503 with Retry-After, as for a write."""
    import sqlite3  # noqa: PLC0415

    from analytics.domain.errors import StorageUnavailable  # noqa: PLC0415

    db = SQLiteDatabase(tmp_path / "events.sqlite3")
    agg = SQLiteAggregateStore(db)

    class Failing:
        def execute(self, *_: object) -> None:
            raise sqlite3.OperationalError("disk I/O error")

    db.read = lambda: Failing()  # type: ignore[method-assign,assignment,return-value]
    with pytest.raises(StorageUnavailable, match="disk I/O error"):
        agg.summarize([window(T0, T0 + timedelta(hours=1))], None)
    with pytest.raises(StorageUnavailable):
        agg.breakdown(window(T0, T0 + timedelta(hours=1)), top=3)
