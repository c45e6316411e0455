"""Every read path on DynamoDB is a Query: search, aggregations, dashboard, generate.

The real Falcon app over the DynamoDB adapters (moto server over HTTP); botocore's
``before-call`` hook counts each operation the clients make (observing, not patching).
Also: the reconcile job finds and repairs drift on this store.
"""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from falcon import testing

from analytics.adapters.dynamodb_schema import ensure_resources
from analytics.application.reconcile import reconcile
from analytics.application.store_events import store_events
from analytics.bootstrap import Container, bootstrap
from analytics.domain.aggregation import COUNT, CounterKey, recompute
from analytics.domain.buckets import QUARTER, epoch_minute
from analytics.domain.clock import FixedClock
from analytics.entrypoints.actors import register_actors
from analytics.entrypoints.api.app import create_app
from tests.aggsupport import make_event, purchase
from tests.aws_support import CallCounter, aws_settings

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 31, 12, 0, 30, tzinfo=UTC)
AGG = "/api/v1/analytics/aggregations"
READ_OPERATIONS = {"Query", "BatchGetItem", "GetItem", "DescribeTable"}


@pytest.fixture(scope="module")
def env(moto_server: Any) -> tuple[Container, testing.TestClient, list[Any]]:
    import uuid  # noqa: PLC0415

    tag = uuid.uuid4().hex[:10]
    settings = aws_settings(
        moto_server,
        {"ANALYTICS_EVENTS_TABLE": f"ns-events-{tag}", "ANALYTICS_AGGREGATES_TABLE": f"ns-agg-{tag}"},
        ANALYTICS_BROKER="stub", ANALYTICS_CACHE_BACKEND="none", ANALYTICS_DYNAMODB_SHARDS="2",
        ANALYTICS_AUTH="disabled",
        ANALYTICS_AGGREGATE_SHARDS="2",
        ANALYTICS_CURSOR_SECRET="no-scan-test-cursor-secret",
    )  # fmt: skip
    ensure_resources(settings)
    container = bootstrap(settings, clock=FixedClock(NOW), broker=StubBroker())
    register_actors(container)
    users, types = itertools.cycle(["a", "b", "c"]), itertools.cycle(["page_view", "click"])
    events = [
        make_event(NOW - timedelta(minutes=m, seconds=1), user=next(users), event_type=next(types),
                   session=f"s{m // 20 % 4}", product=f"p{m // 20 % 3}")
        for m in range(0, 600, 20)
    ] + [purchase(NOW - timedelta(hours=h), user="b", session="s9", product="p1", price="2.50")
         for h in (1, 5, 30)]  # fmt: skip
    store_events(events, repo=container.event_repo, aggregates=container.aggregates)
    return container, testing.TestClient(create_app(container)), events


def test_search_aggregations_dashboard_and_generate_use_no_scan(env: Any) -> None:
    container, client, events = env
    counter = CallCounter(container.event_repo.client)
    searches = [
        "", "event_type=click", "user_id=b", "session_id=s2", "product_id=p1",
        "event_type=purchase&product_id=p1", "user_id=a&event_type=page_view",
        "start=2026-03-31T00:00:00Z&end=2026-03-31T06:00:00Z", "event_type=click&start=2026-03-31T03:00:00Z",
    ]  # fmt: skip
    for query in searches:
        seen, cursor = 0, None
        while True:
            q = query + "&limit=12" + (f"&cursor={cursor}" if cursor else "")
            resp = client.simulate_get("/api/v1/analytics/events/search", query_string=q)
            assert resp.status_code == 200, resp.text
            seen += resp.json["count"]
            cursor = resp.json["next_cursor"]
            if cursor is None:
                break
        assert seen > 0, query
    for period, params in [
        ("hour", "start=2026-03-31T00:00:00Z&end=2026-03-31T13:00:00Z"),
        ("day", "start=2026-03-29&end=2026-04-01&tz=Europe/Berlin"),
        ("week", "start=2026-03-20&end=2026-04-01&event_type=purchase"),
    ]:
        resp = client.simulate_get(f"{AGG}/{period}", query_string=params)
        assert resp.status_code == 200, resp.text
    month = client.simulate_get(f"{AGG}/month", query_string="start=2026-03-25&end=2026-04-01")
    assert month.status_code == 200, month.text
    assert month.json["buckets"][0]["count"] == len(events)
    assert month.json["buckets"][0]["unique_users"] == 3
    assert month.json["buckets"][0]["revenue"] == {"EUR": "7.50"}
    dash = client.simulate_get("/api/v1/analytics/dashboard/metrics", query_string="last=24h")
    assert dash.status_code == 200 and dash.json["total_events"] > 0, dash.text
    # A range over more UTC days than ANALYTICS_DYNAMODB_MAX_READ_DAYS (800) is a 400 before
    # any Query (QA: 1,000 monthly buckets were 121,744 Queries and 80 s, for a read key).
    before = sum(counter.calls.values())
    long = client.simulate_get(f"{AGG}/month", query_string="start=2000-01-01&end=2083-05-01")
    assert (long.status_code, long.json.get("parameter")) == (400, "end"), long.text
    assert "ANALYTICS_DYNAMODB_MAX_READ_DAYS" in long.json["detail"]
    assert sum(counter.calls.values()) == before
    two_years = client.simulate_get(f"{AGG}/month", query_string="start=2024-05-01&end=2026-05-01")
    assert two_years.status_code == 200, two_years.text  # 730 days: within the bound
    gen = client.simulate_post(f"{AGG}/day/generate",
                               query_string="start=2026-03-30&end=2026-04-01&tz=UTC")  # fmt: skip
    assert gen.status_code == 202, gen.text
    worker = Worker(container.broker, worker_timeout=50)
    worker.start()
    try:
        container.broker.join("aggregations")
    finally:
        worker.stop()
    assert counter.calls["Scan"] == 0, counter.calls
    assert set(counter.calls) <= READ_OPERATIONS | {"TransactWriteItems"}, counter.calls
    assert counter.calls["Query"] > 0


def test_reconcile_repairs_drift_on_dynamodb(env: Any) -> None:
    container, _, events = env
    agg, repo = container.aggregates, container.event_repo
    start = NOW - timedelta(hours=2)
    s = epoch_minute(start) // QUARTER * QUARTER
    e = -(-epoch_minute(NOW) // QUARTER) * QUARTER + QUARTER
    damage = {CounterKey(COUNT, QUARTER, s, "click"): 4}
    agg.correct(damage)
    report = reconcile(start, NOW, repo=repo, aggregates=agg)
    assert report.drifted_counters == 1 and report.repaired, report.as_dict()
    inside = [ev for ev in events if s <= epoch_minute(ev.timestamp) < e]
    snap = agg.snapshot(s, e)
    assert snap.counters == recompute(inside)
    assert snap.applied == {ev.event_id for ev in inside}
    assert reconcile(start, NOW, repo=repo, aggregates=agg).drifted_counters == 0
    assert math.isfinite(report.events_scanned) and report.events_scanned == len(inside)
