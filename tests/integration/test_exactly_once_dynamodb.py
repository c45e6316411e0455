"""The exactly-once property of tests/unit/test_exactly_once.py on DynamoDB (moto server).

DynamoDB is the one store without a unit of work: events, applied markers and counters
are separate writes, so "stored but not counted" (a worker dying between them) really
happens there and the redelivery must count it, once. Same generated deliveries (crashes
between the store and the count, redeliveries), same assertion: the counters equal a
recomputation from the stored events.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from analytics.domain.aggregation import recompute
from analytics.domain.buckets import cover
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
