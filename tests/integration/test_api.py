"""The real Falcon app over TestClient, on fakes: statuses, headers, problem+json."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import falcon.testing
import pytest

from analytics.adapters.memory import InMemoryEventRepository, InMemoryTaskQueue
from analytics.bootstrap import bootstrap
from analytics.entrypoints.api.app import create_app
from analytics.settings import Settings

EVENT = {"event_type": "page_view", "user_id": "user123", "session_id": "sess_456"}
SEED_NEW = {
    "event_type": "purchase", "user_id": "user123", "session_id": "sess_456",
    "product_id": "prod_789", "metadata": {},
}  # fmt: skip


@pytest.fixture
def queue() -> InMemoryTaskQueue:
    return InMemoryTaskQueue()


@pytest.fixture
def client(queue: InMemoryTaskQueue) -> Iterator[falcon.testing.TestClient]:
    settings = Settings(broker="stub", storage="memory", max_body_bytes=4096, max_batch_events=5,
                        auth="disabled")  # auth is not the subject here (see test_auth_matrix)
    container = bootstrap(settings, task_queue=queue, event_repo=InMemoryEventRepository())
    yield falcon.testing.TestClient(create_app(container))


def post(client: falcon.testing.TestClient, path: str, body: object, **headers: str):  # type: ignore[no-untyped-def]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.simulate_post(
        path, body=raw, headers={"Content-Type": "application/json", **headers}
    )


def test_seed_example_gets_202_with_receipt(client, queue) -> None:  # type: ignore[no-untyped-def]
    r = post(client, "/api/v1/analytics/events", SEED_NEW)
    assert r.status_code == 202
    body = r.json
    assert set(body) >= {"event_id", "correlation_id", "background_task_id", "computed_fields"}
    assert body["computed_fields"]["event_day"] and body["computed_fields"]["total_value"] is None
    assert r.headers["X-Correlation-ID"] == body["correlation_id"]
    assert len(queue.events) == 1


def test_correlation_id_is_taken_when_valid_and_replaced_when_not(client) -> None:  # type: ignore[no-untyped-def]
    r = post(client, "/api/v1/analytics/events", EVENT, **{"X-Correlation-ID": "abc-123"})
    assert r.headers["X-Correlation-ID"] == "abc-123" == r.json["correlation_id"]
    bad = "x" * 200
    r = post(client, "/api/v1/analytics/events", EVENT, **{"X-Correlation-ID": bad})
    assert r.headers["X-Correlation-ID"] != bad


def test_legacy_route_accepts_old_example_and_is_marked_deprecated(client) -> None:  # type: ignore[no-untyped-def]
    r = post(client, "/analytics/events", {"event_type": "purchase", "user_id": "user123"})
    assert r.status_code == 202
    assert r.headers["Deprecation"] == "true"
    assert "/api/v1/analytics/events" in r.headers["Link"]


@pytest.mark.parametrize(
    ("body", "ctype", "status", "slug"),
    [
        (b"{not json", "application/json", 400, "malformed"),
        (b'{"event_type":"\x80"}', "application/json", 400, "malformed"),  # not UTF-8
        (json.dumps({"event_type": 1}).encode(), "application/json", 422, "validation"),
        (json.dumps(EVENT).encode(), "text/plain", 415, "unsupported-media-type"),
        (b"{" + b" " * 5000 + b"}", "application/json", 413, "body-too-large"),
    ],
)
def test_bad_input_gets_problem_json(client, queue, body, ctype, status, slug) -> None:  # type: ignore[no-untyped-def]
    r = client.simulate_post(
        "/api/v1/analytics/events", body=body, headers={"Content-Type": ctype}
    )
    assert r.status_code == status
    assert r.headers["Content-Type"] == "application/problem+json"
    assert r.json["type"].endswith(slug) and r.json["status"] == status
    assert r.json["correlation_id"] == r.headers["X-Correlation-ID"]
    assert queue.events == []


def test_validation_problem_lists_every_field(client) -> None:  # type: ignore[no-untyped-def]
    r = post(client, "/api/v1/analytics/events", {"event_type": "x", "price": "1", "zzz": 0})
    fields = {e["field"] for e in r.json["errors"]}
    assert fields >= {"user_id", "session_id", "currency", "zzz"}


def test_batch_receipts_and_413_above_the_event_limit(client, queue) -> None:  # type: ignore[no-untyped-def]
    r = post(client, "/api/v1/analytics/events/batch", {"events": [EVENT, {"event_type": "x"}]})
    assert r.status_code == 202
    assert [x["status"] for x in r.json["results"]] == ["accepted", "rejected"]
    r = post(client, "/api/v1/analytics/events/batch", {"events": [EVENT] * 6})
    assert r.status_code == 413 and "at most 5" in r.json["detail"]
    r = post(client, "/api/v1/analytics/events/batch", {"events": [{"event_type": "x"}]})
    assert r.status_code == 422
    assert len(queue.events) == 1


def test_a_batch_with_every_event_rejected_is_a_problem_carrying_the_receipt(client) -> None:  # type: ignore[no-untyped-def]
    bad = [{"event_type": "purchase", "user_id": "u1"}, {"event_type": "x", "price": "1"}]
    r = post(client, "/api/v1/analytics/events/batch", {"events": bad})
    assert r.status_code == 422
    assert r.headers["Content-Type"] == "application/problem+json"  # like every error
    body = r.json
    assert body["type"] == "urn:problem:analytics:batch-rejected" and body["status"] == 422
    assert body["correlation_id"] == r.headers["X-Correlation-ID"]
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (0, 0, 2)
    assert body["background_task_id"] is None
    fields = [{e["field"] for e in item["errors"]} for item in body["results"]]
    assert [item["status"] for item in body["results"]] == ["rejected", "rejected"]
    assert "product_id" in fields[0] and "currency" in fields[1]  # every failing field, per event


def test_security_headers_on_every_response(client) -> None:  # type: ignore[no-untyped-def]
    for r in (client.simulate_get("/health"), client.simulate_get("/nope")):
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["X-Frame-Options"] == "DENY"
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]
        assert r.headers["X-Correlation-ID"]


def test_health_is_liveness_only(client) -> None:  # type: ignore[no-untyped-def]
    assert client.simulate_get("/health").json == {"status": "ok"}


def test_health_answers_head_for_load_balancers(client) -> None:  # type: ignore[no-untyped-def]
    r = client.simulate_head("/health")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["Content-Type"] == "application/json" and r.headers["X-Correlation-ID"]


def test_gzip_body_without_support_is_not_a_500(client) -> None:  # type: ignore[no-untyped-def]
    r = client.simulate_post(
        "/api/v1/analytics/events",
        body=gzip.compress(json.dumps(EVENT).encode()),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert r.status_code < 500
