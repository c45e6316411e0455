"""Exactly-once on DynamoDB when deliveries race: paths moto cannot produce on demand,
driven by botocore's Stubber (a cancelled transaction, a conflict, throttling)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.stub import ANY, Stubber

from analytics.adapters.dynamodb_aggregates import DynamoDBAggregateStore
from analytics.adapters.dynamodb_events import Backoff
from analytics.domain.aggregation import contribution
from analytics.domain.errors import StorageUnavailable
from tests.aggsupport import make_event
from tests.aws_support import stubbed_dynamodb_client

pytestmark = pytest.mark.unit
T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
TABLE = "agg-stubbed"


@pytest.fixture
def client() -> Any:
    return stubbed_dynamodb_client()


def _store(client: Any, sleeps: list[float], attempts: int = 5) -> DynamoDBAggregateStore:
    return DynamoDBAggregateStore(client, TABLE, shards=2, backoff=Backoff(
        max_attempts=attempts, sleep=sleeps.append, rng=random.Random(3)))  # fmt: skip


def _cancelled(stub: Stubber, codes: list[str]) -> None:
    stub.add_client_error(
        "transact_write_items", service_error_code="TransactionCanceledException",
        http_status_code=400,
        response_meta={},
        modeled_fields={"CancellationReasons": [{"Code": c} for c in codes]},
    )  # fmt: skip


def _no_markers(stub: Stubber) -> None:
    stub.add_response("batch_get_item", {"Responses": {TABLE: []}}, {"RequestItems": ANY})


def test_an_event_counted_by_a_racing_delivery_is_dropped_and_the_rest_applied(
    client: Any,
) -> None:
    a, b = (make_event(T0 + timedelta(minutes=i)) for i in range(2))
    sleeps: list[float] = []
    store = _store(client, sleeps)
    with Stubber(client) as stub:
        _no_markers(stub)  # both look new when read...
        _cancelled(stub, ["None", "ConditionalCheckFailed"] + ["None"] * 20)  # ...b raced
        stub.add_response("transact_write_items", {})
        assert store.apply([contribution(a), contribution(b)]) == [a.event_id]
        stub.assert_no_pending_responses()
    assert sleeps == []  # a lost race is not a conflict: re-sent at once


def test_conflicts_are_retried_with_backoff_then_surface(client: Any) -> None:
    a = make_event(T0)
    sleeps: list[float] = []
    store = _store(client, sleeps, attempts=3)
    with Stubber(client) as stub:
        _no_markers(stub)
        _cancelled(stub, ["None", "TransactionConflict"])
        stub.add_response("transact_write_items", {})
        assert store.apply([contribution(a)]) == [a.event_id]
        _no_markers(stub)
        for _ in range(3):
            _cancelled(stub, ["None", "TransactionConflict"])
        with pytest.raises(StorageUnavailable, match="TransactionConflict"):
            store.apply([contribution(a)])
        stub.add_client_error("batch_get_item", service_error_code="ThrottlingException",
                              http_status_code=400)  # fmt: skip
        with pytest.raises(StorageUnavailable, match="ThrottlingException"):
            store.apply([contribution(a)])
        stub.assert_no_pending_responses()
    assert len(sleeps) == 1 + 2


def test_a_redelivery_costs_one_read_and_no_transaction(client: Any) -> None:
    events = [make_event(T0 + timedelta(seconds=i)) for i in range(3)]
    store = _store(client, [])
    markers = [{"sk": {"S": f"{contribution(e).minute:010d}#{e.event_id}"}} for e in events]
    with Stubber(client) as stub:
        stub.add_response("batch_get_item", {"Responses": {TABLE: markers}})
        assert store.apply([contribution(e) for e in events]) == []
        stub.assert_no_pending_responses()


def test_a_read_over_more_days_than_the_bound_is_a_bad_query_before_any_call(client: Any) -> None:
    """Every UTC day of a read is a Query per grain and shard, empty or not (QA: 1,000
    monthly buckets were 121,744 Queries): past ``max_read_days`` a 400, with no call."""
    from analytics.domain.buckets import Piece
    from analytics.domain.errors import BadQuery

    store = DynamoDBAggregateStore(client, TABLE, shards=2, max_read_days=3)
    day = 24 * 60
    start = int(T0.timestamp()) // 60 // day * day  # a UTC midnight, in epoch minutes
    with Stubber(client) as stub:  # no response queued: any call would fail the test
        with pytest.raises(BadQuery, match="spans 4 UTC days.*at most 3") as exc:
            store.summarize([[Piece(15, start, start + 4 * day)]], None)
        assert exc.value.parameter == "end"
        with pytest.raises(BadQuery, match="spans 4 UTC days"):  # a day touched is a day read
            store.summarize([[Piece(15, start + 1, start + 3 * day + 1)]], None)
        for _ in range(3 * 2):  # three days, two shards: allowed, and read
            stub.add_response("query", {"Items": [], "Count": 0})
        store.summarize([[Piece(15, start, start + 3 * day)]], None)
        stub.assert_no_pending_responses()
