"""One contract for every EventRepository adapter: memory, SQLite (and later DynamoDB).

To add an adapter, add a param to ``make_repo``: the factory returns a fresh, empty
repository each call (hypothesis calls it once per example).
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics.adapters.memory import InMemoryEventRepository
from analytics.adapters.sqlite_store import SQLiteDatabase, SQLiteEventRepository
from analytics.domain.events import Event
from analytics.domain.ports import EventRepository
from analytics.domain.search import EventQuery, SearchKey, sort_key
from tests import aggsupport

T0 = datetime(2026, 3, 1, tzinfo=UTC)
RepoFactory = Callable[[], EventRepository]


def make_event(ts: datetime, *, event_type: str = "page_view", **fields: Any) -> Event:
    """aggsupport's event, with what the contract also round-trips: metadata on every event,
    a price on purchases."""
    price = "9.99" if event_type == "purchase" else None
    return aggsupport.make_event(ts, event_type=event_type, price=price, currency="EUR",
                                 metadata={"k": "v"}, **fields)  # fmt: skip


@pytest.fixture(params=["memory", "sqlite", "dynamodb"])
def make_repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RepoFactory]:
    counter = itertools.count()

    def factory() -> EventRepository:
        if request.param == "dynamodb":
            from tests.aws_support import dynamodb_stores  # noqa: PLC0415

            return dynamodb_stores(request.getfixturevalue("moto_server"))[0]
        if request.param == "memory":
            return InMemoryEventRepository()
        return SQLiteEventRepository(SQLiteDatabase(tmp_path / f"events-{next(counter)}.sqlite3"))

    yield factory


def page_through(
    repo: EventRepository,
    query: EventQuery,
    limit: int,
    between: Callable[[int], None] = lambda i: None,
) -> list[Event]:
    out: list[Event] = []
    after: SearchKey | None = None
    for i in itertools.count():
        page = repo.search(query, after=after, limit=limit)
        out.extend(page)
        if len(page) < limit:
            return out
        after = SearchKey(page[-1].timestamp, page[-1].event_id)
        between(i)
    raise AssertionError("unreachable")


def reference(events: list[Event], query: EventQuery) -> list[Event]:
    return sorted(
        (
            e for e in events
            if all(getattr(query, f) in (None, getattr(e, f))
                   for f in ("event_type", "user_id", "session_id", "product_id"))
            and (query.start is None or e.timestamp >= query.start)
            and (query.end is None or e.timestamp < query.end)
        ),
        key=lambda e: sort_key(e.timestamp, e.event_id),
    )  # fmt: skip


def ids(events: list[Event]) -> list[uuid.UUID]:
    return [e.event_id for e in events]


def test_add_many_is_idempotent_and_get_many_returns_stored(make_repo: RepoFactory) -> None:
    repo = make_repo()
    a, b = make_event(T0), make_event(T0)
    assert repo.add_many([a, b]) == [a.event_id, b.event_id]
    assert repo.add_many([a, make_event(T0, event_id=b.event_id, user="other")]) == []
    got = repo.get_many([a.event_id, b.event_id, uuid.uuid4()])
    assert got == {a.event_id: a, b.event_id: b} and repo.count() == 2


def test_search_returns_the_stored_event_with_computed_fields(make_repo: RepoFactory) -> None:
    repo = make_repo()
    e = make_event(T0 + timedelta(microseconds=7), event_type="purchase", product="p1")
    repo.add_many([e])
    (found,) = repo.search(EventQuery(product_id="p1"), after=None, limit=10)
    assert found == e and found.total_value == Decimal("9.99") and found.event_day == "2026-03-01"


@pytest.mark.parametrize("field", ["event_type", "user_id", "session_id", "product_id"])
def test_each_filter_selects_exactly_its_events(make_repo: RepoFactory, field: str) -> None:
    repo = make_repo()
    events = [
        make_event(T0 + timedelta(seconds=i), event_type=f"t{i % 3}", user=f"u{i % 4}",
                   session=f"s{i % 5}", product=f"p{i % 2}")
        for i in range(40)
    ]  # fmt: skip
    repo.add_many(events)
    for value in {getattr(e, field) for e in events}:
        query = EventQuery(**{field: value})
        assert ids(repo.search(query, after=None, limit=1000)) == ids(reference(events, query))


def test_filters_combine_and_range_is_half_open(make_repo: RepoFactory) -> None:
    repo = make_repo()
    events = [
        make_event(T0 + timedelta(minutes=i), event_type=("purchase", "click")[i % 2],
                   user=f"u{i % 3}", product="p1")
        for i in range(60)
    ]  # fmt: skip
    repo.add_many(events)
    query = EventQuery(
        event_type="purchase", user_id="u0", start=T0 + timedelta(minutes=6),
        end=T0 + timedelta(minutes=42),
    )  # fmt: skip
    found = repo.search(query, after=None, limit=1000)
    assert ids(found) == ids(reference(events, query))
    assert found[0].timestamp == T0 + timedelta(minutes=6)  # start included
    assert all(e.timestamp < T0 + timedelta(minutes=42) for e in found)  # end excluded
    assert repo.search(EventQuery(user_id="nobody"), after=None, limit=10) == []


def test_equal_timestamps_are_ordered_by_event_id(make_repo: RepoFactory) -> None:
    repo = make_repo()
    events = [make_event(T0) for _ in range(25)]
    repo.add_many(events)
    got = page_through(repo, EventQuery(user_id="u1"), limit=4)
    assert ids(got) == sorted(ids(events), key=str)


def test_paging_while_events_arrive_never_skips_or_repeats(make_repo: RepoFactory) -> None:
    """Keyset paging: every event stored before the traversal is returned exactly once;
    events arriving meanwhile (late, back-dated, or at the tie timestamp) never cause a
    repeat or a skip of the others, and those sorting after the position are returned."""
    repo = make_repo()
    rng = random.Random(7)
    before = [make_event(T0 + timedelta(seconds=rng.randrange(50))) for _ in range(120)]
    repo.add_many(before)
    arrived: list[Event] = []

    def arrive(page: int) -> None:
        batch = [
            make_event(T0 + timedelta(seconds=rng.randrange(50))),  # anywhere, maybe behind us
            make_event(T0 + timedelta(seconds=100 + page)),  # newer than everything
        ]
        repo.add_many(batch)
        arrived.extend(batch)

    got = page_through(repo, EventQuery(user_id="u1"), limit=7, between=arrive)
    assert len(ids(got)) == len(set(ids(got)))  # no repeats
    assert set(ids(before)) <= set(ids(got))  # no skips
    newer = [e for e in arrived if e.timestamp >= T0 + timedelta(seconds=100)]
    assert set(ids(newer)) <= set(ids(got))  # new events ahead of the position are reached
    keys = [sort_key(e.timestamp, e.event_id) for e in got]
    assert keys == sorted(keys)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 20), st.sampled_from(["a", "b"]), st.sampled_from(["u1", "u2"]),
                  st.sampled_from([None, "p1", "p2"])),
        max_size=40,
    ),
    field=st.sampled_from([None, "event_type", "user_id", "product_id"]),
    bounds=st.tuples(st.none() | st.integers(0, 20), st.none() | st.integers(0, 20)),
    limit=st.integers(1, 9),
)  # fmt: skip
def test_paging_equals_filter_then_sort(
    make_repo: RepoFactory,
    rows: list[tuple[int, str, str, str | None]],
    field: str | None,
    bounds: tuple[int | None, int | None],
    limit: int,
) -> None:
    repo = make_repo()
    events = [
        make_event(T0 + timedelta(seconds=s), event_type=t, user=u, product=p)
        for s, t, u, p in rows
    ]
    repo.add_many(events)
    lo, hi = bounds
    if lo is not None and hi is not None and hi <= lo:
        lo, hi = hi, lo + 1 if hi == lo else lo
    values = {"event_type": "a", "user_id": "u1", "product_id": "p1"}
    query = EventQuery(
        start=None if lo is None else T0 + timedelta(seconds=lo),
        end=None if hi is None else T0 + timedelta(seconds=hi),
        **({field: values[field]} if field else {}),
    )
    assert ids(page_through(repo, query, limit)) == ids(reference(events, query))


# --- SQLite only: the plan proves the index serves it ---------------------------------
def plan(repo: SQLiteEventRepository, query: EventQuery, after: SearchKey | None) -> str:
    sql, args = repo.search_sql(query, after=after, limit=100)
    rows = repo.db.read().execute("EXPLAIN QUERY PLAN " + sql, args).fetchall()
    return " | ".join(str(r[-1]) for r in rows)


@pytest.mark.parametrize(
    ("query", "index"),
    [
        (EventQuery(event_type="purchase"), "events_by_type (event_type=?"),
        (EventQuery(user_id="u1"), "events_by_user (user_id=?"),
        (EventQuery(session_id="s1"), "events_by_session (session_id=?"),
        (EventQuery(product_id="p1"), "events_by_product (product_id=?"),
        (EventQuery(start=T0, end=T0 + timedelta(days=1)), "events_by_ts (ts_us<?"),
        (EventQuery(event_type="purchase", product_id="p1", start=T0), "events_by_product (product_id=?"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("paged", [False, True])
def test_sqlite_search_is_an_index_search_without_sort(
    tmp_path: Path, query: EventQuery, index: str, paged: bool
) -> None:
    repo = SQLiteEventRepository(SQLiteDatabase(tmp_path / "plan.sqlite3"))
    repo.add_many([make_event(T0 + timedelta(seconds=i), product="p1") for i in range(50)])
    repo.db.read().execute("ANALYZE")  # a planner with statistics must still pick the index
    after = SearchKey(T0 + timedelta(hours=1), uuid.uuid4()) if paged else None
    text = plan(repo, query, after)
    assert text.startswith("SEARCH events USING INDEX ") and "SCAN" not in text, text
    assert "TEMP B-TREE" not in text, text  # the index order is the result order
    name, _, cond = index.partition(" (")
    assert name in text and cond in text, text  # the filter's own index, seeking on it
    if paged:
        assert "(ts_us,event_id)>(?,?)" in text, text  # a deep page seeks, it does not walk


def test_sqlite_unfiltered_search_reads_the_time_index_in_order(tmp_path: Path) -> None:
    repo = SQLiteEventRepository(SQLiteDatabase(tmp_path / "plan.sqlite3"))
    text = plan(repo, EventQuery(), None)
    # No filter at all: the time index read in order, stopping after LIMIT rows.
    assert "USING INDEX events_by_ts" in text and "TEMP B-TREE" not in text, text
