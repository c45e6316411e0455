"""`analytics serve` end to end: events in over HTTP show up, counted once, in the
dashboard and the aggregations (worker -> counters -> cache invalidation -> API)."""

from __future__ import annotations

import uuid
from urllib.parse import urlencode

import pytest

from tests.e2e.test_serve_e2e import service as service  # noqa: PLC0414 - module fixture
from tests.support import http_json, wait_until

pytestmark = pytest.mark.e2e


def test_counts_reach_dashboard_and_aggregations_once(service) -> None:  # type: ignore[no-untyped-def]
    base, _, _ = service
    dash = f"{base}/api/v1/analytics/dashboard/metrics?last=15m"
    status, _, before = http_json("GET", dash)
    assert status == 200
    n0 = before["total_events"]
    events = [
        {"event_type": "page_view", "user_id": f"agg-u{i % 3}", "session_id": f"agg-s{i % 2}",
         "event_id": str(uuid.uuid4())}
        for i in range(6)
    ] + [
        {"event_type": "purchase", "user_id": "agg-u0", "session_id": "agg-s0",
         "product_id": "agg-p", "price": "12.34", "currency": "EUR", "quantity": 2,
         "event_id": str(uuid.uuid4())},
    ]  # fmt: skip
    for _ in range(2):  # the client retries the whole batch: counted once
        status, _, body = http_json(
            "POST", f"{base}/api/v1/analytics/events/batch", {"events": events}
        )
        assert status == 202, body

    def settled() -> bool:
        return http_json("GET", dash).body["total_events"] >= n0 + 7

    wait_until(settled, timeout=30, message="events never reached the dashboard")
    _, _, d = http_json("GET", dash)
    assert d["total_events"] == n0 + 7
    assert d["revenue"] == {"EUR": "24.68"} and d["average_order_value"] == {"EUR": "24.68"}
    assert any(p["product_id"] == "agg-p" for p in d["top_products_by_revenue"])
    q = urlencode({"start": d["start"], "end": d["end"], "event_type": "purchase"})
    status, _, agg = http_json("GET", f"{base}/api/v1/analytics/aggregations/hour?{q}")
    assert status == 200
    assert sum(b["count"] for b in agg["buckets"]) == 1
    assert [b["revenue"] for b in agg["buckets"] if b["revenue"]] == [{"EUR": "24.68"}]
    whole = urlencode({"start": d["start"], "end": d["end"]})  # generate takes no event_type
    status, _, gen = http_json("POST", f"{base}/api/v1/analytics/aggregations/hour/generate?{whole}")
    assert status == 202 and gen["task_id"]


def test_bad_aggregation_query_is_a_problem(service) -> None:  # type: ignore[no-untyped-def]
    base, _, _ = service
    status, headers, body = http_json("GET", f"{base}/api/v1/analytics/aggregations/fortnight")
    assert status == 400 and body["parameter"] == "period"
    assert headers["Content-Type"] == "application/problem+json"
