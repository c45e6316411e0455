"""The real Falcon app over TestClient, on fakes: statuses, headers, problem+json."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import falcon.testing
import pytest

from analytics.adapters.memory import InMemoryEventRepository, InMemoryTaskQueue
from analytics.bootstrap import bootstrap
from analytics.entrypoints.api.app import create_wsgi_app
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
    yield falcon.testing.TestClient(create_wsgi_app(container))


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
    for refused in (client.simulate_get("/analytics/events"),  # 405
                    client.simulate_post("/analytics/events", body=b"{",
                                         headers={"Content-Type": "application/json"})):  # 400  # fmt: skip
        assert refused.status_code in (400, 405)
        assert refused.headers["Deprecation"] == "true", refused.status_code
        assert 'rel="successor-version"' in refused.headers["Link"]


def test_the_legacy_route_is_marked_deprecated_before_auth_too() -> None:
    """QA: its 401 (no key) lacked the headers its 202 carries."""
    from tests.support import ApiHarness  # noqa: PLC0415

    r = ApiHarness().client.simulate_post("/analytics/events", json={"event_type": "x"})
    assert r.status_code == 401 and r.headers["Deprecation"] == "true"


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


@pytest.mark.parametrize("route", ["/api/v1/analytics/events", "/analytics/events"])
def test_a_price_string_decimal_reads_loosely_is_refused(client, queue, route) -> None:  # type: ignore[no-untyped-def]
    """QA: "1_0" was stored as a price of 10 (Python's Decimal reads underscores)."""
    doc = {"event_type": "purchase", "user_id": "u1", "session_id": "s1", "product_id": "p1",
           "currency": "EUR", "price": "1_0"}  # fmt: skip
    r = post(client, route, doc)
    assert r.status_code == 422
    assert [(e["field"], e["rule"]) for e in r.json["errors"]] == [("price", "decimal")]
    assert post(client, route, {**doc, "price": "10"}).status_code == 202
    assert [str(e.price) for e in queue.events] == ["10"]


def test_batch_receipts_and_413_above_the_event_limit(client, queue) -> None:  # type: ignore[no-untyped-def]
    r = post(client, "/api/v1/analytics/events/batch", {"events": [EVENT, {"event_type": "x"}]})
    assert r.status_code == 202
    assert [x["status"] for x in r.json["results"]] == ["accepted", "rejected"]
    r = post(client, "/api/v1/analytics/events/batch", {"events": [EVENT] * 6})
    assert r.status_code == 413 and "at most 5" in r.json["detail"]
    r = post(client, "/api/v1/analytics/events/batch", {"events": [{"event_type": "x"}]})
    assert r.status_code == 422
    assert len(queue.events) == 1


def test_the_nil_and_max_uuids_are_refused_as_event_ids_on_every_route(client, queue) -> None:  # type: ignore[no-untyped-def]
    nil, big = "00000000-0000-0000-0000-000000000000", "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"
    for path, event in (("/api/v1/analytics/events", {**EVENT, "event_id": nil}),
                        ("/analytics/events", {**EVENT, "event_id": big})):  # fmt: skip
        r = post(client, path, event)
        assert r.status_code == 422, path
        assert [(e["field"], e["rule"]) for e in r.json["errors"]] == [("event_id", "placeholder_uuid")]
    r = post(client, "/api/v1/analytics/events/batch",
             {"events": [{**EVENT, "event_id": nil}, EVENT, {**EVENT, "event_id": big}]})  # fmt: skip
    assert [x["status"] for x in r.json["results"]] == ["rejected", "accepted", "rejected"]
    assert r.json["results"][2]["errors"][0]["message"].startswith(big.lower() + " is the max UUID")
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


def test_a_total_beyond_what_exact_counters_can_hold_is_422_naming_it(client, queue) -> None:  # type: ignore[no-untyped-def]
    """price x quantity is at most 10^9, like the price: a worker's round then always fits
    SQLite's 64-bit counters (an event of 5 * 10^12 made the worker fail on every try)."""
    big = {**EVENT, "event_type": "purchase", "product_id": "p1", "price": "5000000",
           "currency": "EUR", "quantity": 1_000_000}  # fmt: skip
    r = post(client, "/api/v1/analytics/events", big)
    assert r.status_code == 422
    assert [(e["field"], e["rule"]) for e in r.json["errors"]] == [("total_value", "range")]
    at_bound = {**big, "price": "1000"}  # x 1,000,000 = 10^9
    assert post(client, "/api/v1/analytics/events", at_bound).status_code == 202
    r = post(client, "/api/v1/analytics/events/batch", {"events": [big, at_bound]})
    assert r.status_code == 202
    assert [x["status"] for x in r.json["results"]] == ["rejected", "accepted"]


def test_metadata_nested_near_the_decoders_limit_is_never_a_500() -> None:
    """Nesting just under what the decoder refuses (400) used to pass it and then exhaust
    the stack in the metadata size check: a 500 in a band of a few levels. Every depth
    around the limit is now a 4xx problem (422 too deep, or 400 past the decoder)."""
    from tests.support import ApiHarness  # noqa: PLC0415

    client = ApiHarness(auth="disabled").client  # the default body limit (1 MiB)
    statuses = set()
    for depth in range(850, 1150, 3):
        nested = '{"a":' * depth + "1" + "}" * depth
        body = '{"event_type":"x","user_id":"u","session_id":"s","metadata":{"m":%s}}' % nested
        for path, raw in (("/api/v1/analytics/events", body),
                          ("/api/v1/analytics/events/batch", '{"events":[%s]}' % body)):  # fmt: skip
            r = client.simulate_post(path, body=raw, headers={"Content-Type": "application/json"})
            assert r.status_code in (400, 422), (depth, path, r.status_code, r.text[:200])
            statuses.add(r.status_code)
    assert {400, 422} <= statuses  # both sides of the decoder's limit were covered


@pytest.mark.parametrize(("body", "expected"), [
    ({"foo": 1, "bar": 2}, [("events", "required"), ("foo", "unknown_field"), ("bar", "unknown_field")]),
    ({"events": [EVENT], "foo": 1}, [("foo", "unknown_field")]),
    (EVENT, [("events", "required"), ("event_type", "unknown_field"), ("user_id", "unknown_field"),
             ("session_id", "unknown_field")]),
    ({"events": 5}, [("events", "type")]),
    ([EVENT], [("$", "type")]),
])  # fmt: skip
def test_a_batch_wrapper_names_every_failure(client, body, expected) -> None:  # type: ignore[no-untyped-def]
    """A bare event posted to the batch route, or a batch with stray keys: 422 naming each
    stray key and the missing ``events`` (it named one key, under ``events``)."""
    r = post(client, "/api/v1/analytics/events/batch", body)
    assert r.status_code == 422, r.text
    assert [(e["field"], e["rule"]) for e in r.json["errors"]] == expected


def test_not_found_and_method_not_allowed_say_what_to_do(client) -> None:  # type: ignore[no-untyped-def]
    r = client.simulate_get("/nope")
    assert r.status_code == 404 and "openapi.json" in r.json["detail"]
    r = client.simulate_put("/api/v1/analytics/events")
    assert r.status_code == 405 and r.json["detail"] == f"this route answers {r.headers['Allow']}"
    assert r.headers["Content-Type"] == "application/problem+json"
    r = client.simulate_delete("/api/v1/analytics/events/search")  # HEAD works, so it is listed
    assert r.status_code == 405 and r.headers["Allow"] == "GET, HEAD, OPTIONS", r.headers
    assert r.json["detail"] == "this route answers GET, HEAD, OPTIONS"
    assert client.simulate_options("/api/v1/analytics/events/search").headers["Allow"] == "GET, HEAD"


def test_head_answers_on_every_get_route_without_a_body(client) -> None:  # type: ignore[no-untyped-def]
    """RFC 9110: HEAD wherever GET is served (it was 405 but on /health)."""
    query = "start=2026-11-20&end=2026-11-22"
    for path in ("/api/v1/analytics/aggregations/day", "/api/v1/openapi.json", "/health"):
        got = client.simulate_get(path, query_string=query)
        head = client.simulate_head(path, query_string=query)
        assert (head.status_code, head.content) == (got.status_code, b""), path
        assert head.headers["Content-Length"] == str(len(got.content))
        assert head.headers.get("ETag") == got.headers.get("ETag")
    head = client.simulate_head("/api/v1/analytics/dashboard/metrics")  # "now": its own tag
    assert (head.status_code, head.content) == (200, b"") and head.headers["ETag"]
    assert client.simulate_head("/nope").content == b""
    assert client.simulate_head("/api/v1/analytics/events").status_code == 405  # POST only


def test_a_422_names_the_bounds_beside_a_bad_field(client) -> None:  # type: ignore[no-untyped-def]
    """QA: a bad user_id hid a timestamp from 2099 (a second round trip to learn of it)."""
    bad = {**EVENT, "user_id": "", "timestamp": "2099-01-01T00:00:00Z"}
    r = client.simulate_post("/api/v1/analytics/events", json=bad)
    assert r.status_code == 422
    assert {(e["field"], e["rule"]) for e in r.json["errors"]} == {
        ("user_id", "invalid"), ("timestamp", "max_future")}  # fmt: skip
    r = client.simulate_post("/api/v1/analytics/events/batch", json={"events": [EVENT, bad]})
    assert r.status_code == 202
    accepted, rejected = r.json["results"]
    assert accepted["status"] == "accepted" and rejected["status"] == "rejected"
    assert {(e["field"], e["rule"]) for e in rejected["errors"]} == {
        ("user_id", "invalid"), ("timestamp", "max_future")}  # fmt: skip


@pytest.mark.parametrize(
    ("path", "headers", "status", "drained"),
    [
        ("/api/v1/analytics/events", {"Content-Type": "text/plain"}, 415, True),
        ("/api/v1/analytics/events/batch", {"Content-Encoding": "br"}, 415, True),
        ("/api/v1/nowhere", {}, 404, True),
        ("/health", {}, 405, True),
        ("/api/v1/analytics/events", {"Content-Type": "text/plain", "Transfer-Encoding": "chunked"},
         415, True),  # fmt: skip
        ("/api/v1/analytics/events", {"X-Pad": "x"}, 413, True),  # over the limit, within the cap
        ("/api/v1/analytics/events", {"X-Pad": "y"}, 413, False),  # over the cap too: not read
    ],
)
def test_an_answer_reads_what_it_left_of_the_body(client, path, headers, status, drained) -> None:  # type: ignore[no-untyped-def]
    """What the server does not read stays on the connection (gunicorn then closes it):
    refused requests read the rest of a body up to the decompressed cap (8 MiB)."""
    body = b"x" * {413: 5000 if drained else 9 * 1024 * 1024}.get(status, 3000)
    env = falcon.testing.create_environ(
        path, method="POST", body=body, headers={"Content-Type": "application/json", **headers}
    )
    if "Transfer-Encoding" in headers:
        del env["CONTENT_LENGTH"]  # the server decodes the chunks; the app sees no length
    stream = env["wsgi.input"]
    result = falcon.testing.StartResponseMock()
    b"".join(client.app(env, result))
    assert result.status.startswith(str(status)), result.status
    assert (stream.tell() == len(body)) is drained, stream.tell()


def test_a_lone_surrogate_escape_is_u_fffd_and_costs_no_other_event(client, queue) -> None:  # type: ignore[no-untyped-def]
    """``"\\ud800"`` (half an emoji, cut by a JavaScript client; Python's json.dumps writes
    one as is) is valid JSON syntax that msgspec refuses: one in one event's metadata made
    the whole batch a 400 "Input data was truncated" (QA). It becomes U+FFFD, as a browser's
    UTF-8 encoding of the string would make it."""
    good = '{"event_type":"page_view","user_id":"u1","session_id":"s1"}'
    cut = '{"event_type":"page_view","user_id":"u2","session_id":"s1","metadata":{"t":"ab\\ud83d"}}'
    r = post(client, "/api/v1/analytics/events/batch", f'{{"events":[{good},{cut}]}}'.encode())
    assert r.status_code == 202 and r.json["accepted"] == 2, r.text
    assert queue.events[-1].metadata == {"t": "ab\ufffd"}
    r = post(client, "/api/v1/analytics/events", cut.encode())
    assert r.status_code == 202, r.text
    bad_id = '{"event_type":"page_view","user_id":"u\\udc00","session_id":"s1"}'
    r = post(client, "/api/v1/analytics/events", bad_id.encode())  # the pattern says no
    assert r.status_code == 422 and r.json["errors"][0]["field"] == "user_id", r.text
    pair = '{"event_type":"page_view","user_id":"u3","session_id":"s1","metadata":{"t":"\\ud83d\\ude00"}}'
    assert post(client, "/api/v1/analytics/events", pair.encode()).status_code == 202
    assert queue.events[-1].metadata == {"t": "\U0001f600"}  # a pair stays the emoji
