"""The exactly-once property of tests/unit/test_exactly_once.py on DynamoDB (moto server).

DynamoDB is the one store without a unit of work: events, applied markers and counters
are separate writes, so "stored but not counted" (a worker dying between them) really
happens there and the redelivery must count it, once. Same generated deliveries (crashes
between the store and the count, redeliveries), same assertion: the counters equal a
recomputation from the stored events.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from analytics.adapters.dynamodb_aggregates import DynamoDBAggregateStore
from analytics.domain.aggregation import Contribution, contribution, recompute
from analytics.domain.buckets import cover
from tests.aggsupport import make_event, purchase
from tests.aws_support import dynamodb_stores
from tests.unit.test_exactly_once import HOUR, T0, _run, deliveries

pytestmark = pytest.mark.integration


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(deliveries())
def test_incremental_equals_recomputation_dynamodb(moto_server: Any, msgs: Any) -> None:
    repo, agg = dynamodb_stores(moto_server)
    _run(msgs, repo, agg)
    stored = list(repo.iter_range(T0, T0 + timedelta(hours=1)))
    assert agg.snapshot(*HOUR).counters == recompute(stored)
    [s] = agg.summarize([cover(*HOUR)], None)
    assert s.count == len(stored)


class ReadBeforeTheOtherWrote(DynamoDBAggregateStore):
    """A worker whose pre-read of the applied markers happened before the racing
    delivery's transaction committed: it finds no marker, whatever the table holds."""

    def _applied(self, contributions: Any) -> set[uuid.UUID]:
        return set()


def test_racing_deliveries_that_both_read_no_marker_count_once(moto_server: Any) -> None:
    """Mutation QA: two workers got the same message (a redelivery while the first still
    ran); both read the markers before either wrote, so both see the events as new. The
    marker's ``attribute_not_exists`` condition in the transaction is what makes the
    second one add nothing: without it both transactions land and every figure doubles."""
    _, agg = dynamodb_stores(moto_server)
    first = ReadBeforeTheOtherWrote(agg.client, agg.table, shards=agg.shards)
    second = ReadBeforeTheOtherWrote(agg.client, agg.table, shards=agg.shards)
    a = purchase(T0 + timedelta(minutes=1), price="10")
    b = make_event(T0 + timedelta(minutes=2), user="u2")
    assert first.apply([contribution(a)]) == [a.event_id]
    assert second.apply([contribution(a)]) == []  # lost the race: nothing added
    # in a group, the event the other worker counted is dropped and the rest applied
    batch: list[Contribution] = [contribution(a), contribution(b)]
    assert second.apply(batch) == [b.event_id]
    assert first.apply(batch) == []
    [s] = agg.summarize([cover(*HOUR)], None)
    assert (s.count, s.unique_users, s.revenue_micros) == (2, 2, {"EUR": 10_000_000})
    assert agg.snapshot(*HOUR).counters == recompute([a, b])
