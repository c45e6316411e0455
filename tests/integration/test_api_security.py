"""Rate limits, overload, input limits and headers over the real app (Falcon TestClient)."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from analytics.adapters.memory import FixedBacklog, InMemoryRateLimiter
from analytics.entrypoints.api.openapi import iter_routes
from analytics.entrypoints.api.security import _address
from tests.support import ApiHarness

pytestmark = pytest.mark.integration

EVENT = {"event_type": "page_view", "user_id": "u1", "session_id": "s1"}
EVENTS = "/api/v1/analytics/events"
BATCH = "/api/v1/analytics/events/batch"


class FrozenMs:
    """Time stands still: no refill during a test, so counts are exact."""

    def __call__(self) -> float:
        return 5_000_000.0


def frozen(**kw: object) -> ApiHarness:
    return ApiHarness(rate_limiter=InMemoryRateLimiter(now_ms=FrozenMs()), **kw)


def assert_problem(r, status: int) -> dict:  # type: ignore[no-untyped-def,type-arg]
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json
    assert body["status"] == status and body["type"].startswith("urn:problem:analytics:")
    assert body["correlation_id"] == r.headers["x-correlation-id"]
    return body  # type: ignore[no-any-return]


# --- rate limits ---------------------------------------------------------------------------
def test_429_with_retry_after_and_ratelimit_headers() -> None:
    h = frozen()
    key = {"X-API-Key": h.key("ingest", rate_per_minute=60, burst=3)}
    for left in (2, 1, 0):
        r = h.client.simulate_post(EVENTS, json=EVENT, headers=key)
        assert r.status_code == 202
        assert r.headers["ratelimit-limit"] == "3" and r.headers["ratelimit-remaining"] == str(left)
    r = h.client.simulate_post(EVENTS, json=EVENT, headers=key)
    body = assert_problem(r, 429)
    assert int(r.headers["retry-after"]) >= 1 and body["retry_after"] == int(r.headers["retry-after"])
    assert r.headers["ratelimit-remaining"] == "0" and "ratelimit-reset" in r.headers
    assert len(h.container.task_queue.events) == 3  # type: ignore[attr-defined]


def test_a_batch_counts_its_events() -> None:
    h = frozen()
    key = {"X-API-Key": h.key("ingest", rate_per_minute=600, burst=500)}
    r = h.client.simulate_post(BATCH, json={"events": [EVENT] * 500}, headers=key)
    assert r.status_code == 202 and r.headers["ratelimit-remaining"] == "0"
    r = h.client.simulate_post(EVENTS, json=EVENT, headers=key)
    assert_problem(r, 429)
    # another key has its own budget; the default comes from settings
    other = {"X-API-Key": h.key("ingest")}
    r = h.client.simulate_post(BATCH, json={"events": [EVENT] * 400}, headers=other)
    assert r.status_code == 202
    assert r.headers["ratelimit-limit"] == str(h.settings.rate_limit_burst)
    assert int(r.headers["ratelimit-remaining"]) == h.settings.rate_limit_burst - 400


def test_a_batch_larger_than_the_budget_is_refused_before_queueing() -> None:
    h = frozen()
    key = {"X-API-Key": h.key("ingest", rate_per_minute=600, burst=100)}
    r = h.client.simulate_post(BATCH, json={"events": [EVENT] * 60}, headers=key)
    assert r.status_code == 202
    r = h.client.simulate_post(BATCH, json={"events": [EVENT] * 60}, headers=key)
    assert_problem(r, 429)  # fits the burst, not what is left of it: wait and retry
    assert len(h.container.task_queue.events) == 60  # type: ignore[attr-defined]


def test_a_batch_larger_than_the_burst_is_413_not_a_429_that_never_clears() -> None:
    """A batch of more events than the key's burst can never be admitted: it got 429 with
    a Retry-After after which it failed again, forever."""
    h = frozen()
    key = {"X-API-Key": h.key("ingest", rate_per_minute=600, burst=100)}
    for size in (101, 150):
        r = h.client.simulate_post(BATCH, json={"events": [EVENT] * size}, headers=key)
        body = assert_problem(r, 413)
        assert (body["count"], body["limit"]) == (size, 100) and "at most 100" in body["detail"]
    assert h.container.task_queue.events == []  # type: ignore[attr-defined]
    fresh = {"X-API-Key": h.key("ingest", rate_per_minute=600, burst=100)}
    r = h.client.simulate_post(BATCH, json={"events": [EVENT] * 100}, headers=fresh)
    assert r.status_code == 202  # the burst itself fits (each refused request cost 1)


def test_behind_a_trusted_proxy_the_address_is_the_one_the_proxy_appended() -> None:
    """The first X-Forwarded-For entry (or a Forwarded header) is whatever the client
    wrote: each request was a new anonymous bucket, and the limit never bit."""
    h = frozen(anon_rate_limit_burst=3, trust_forwarded_for=True)
    statuses = [
        h.client.simulate_post(EVENTS, json=EVENT, remote_addr="10.0.0.9", headers={
            "X-Forwarded-For": f"198.51.100.{i}, 203.0.113.7",
            "Forwarded": f"for=198.51.100.{i}"}).status_code
        for i in range(4)
    ]  # fmt: skip
    assert statuses == [401] * 3 + [429]
    other = {"X-Forwarded-For": "198.51.100.1, 203.0.113.8"}  # another real client
    assert h.client.simulate_post(EVENTS, json=EVENT, headers=other).status_code == 401
    # A last entry that is no address is the peer's bucket, not a new one per value (QA:
    # "1.2.3.4, garbage<i>" was never limited).
    h = frozen(anon_rate_limit_burst=3, trust_forwarded_for=True)
    statuses = [h.client.simulate_post(EVENTS, json=EVENT, remote_addr="10.0.0.9", headers={
        "X-Forwarded-For": f"1.2.3.4, garbage{i}"}).status_code for i in range(4)]  # fmt: skip
    assert statuses == [401] * 3 + [429]
    for entry, same_as in [("203.0.113.7:51234", "203.0.113.7"),
                           ("[2001:db8::1]:443", "2001:db8::1"), ("2001:db8::1", "2001:db8::1")]:
        assert _address(entry) == same_as, entry  # fmt: skip


def test_probes_ignore_a_presented_key_and_raw_keys_need_bearer() -> None:
    """/health is open and exempt from the anonymous limit, but a stale key on the probe
    was checked and charged: 429 once the address's bucket was empty. And a key sent as
    ``Authorization: <key>`` without ``Bearer`` was accepted, though documented as not."""
    h = frozen(anon_rate_limit_burst=2)
    stale = {"Authorization": "Bearer ak_000000000000_stale"}
    assert [h.client.simulate_get("/health", headers=stale).status_code
            for _ in range(5)] == [200] * 5  # fmt: skip
    key = h.key("ingest")
    r = h.client.simulate_post(EVENTS, json=EVENT, headers={"Authorization": key})
    assert_problem(r, 401)
    assert h.client.simulate_post(EVENTS, json=EVENT, headers={"Authorization": f"Bearer {key}"}).status_code == 202


def test_made_up_methods_share_one_metrics_label() -> None:
    from analytics.entrypoints import metrics as m  # noqa: PLC0415

    h = frozen()
    for i in range(5):
        h.client.simulate_request(f"M{i:05d}", "/x")
    methods = {s.labels["method"] for metric in m.HTTP_REQUESTS.collect() for s in metric.samples}
    assert not any(name.startswith("M0") for name in methods), methods
    assert "other" in methods


def test_unauthenticated_requests_are_limited_per_address() -> None:
    h = frozen(anon_rate_limit_burst=5)
    statuses = [
        h.client.simulate_post(EVENTS, json=EVENT, remote_addr="10.0.0.1").status_code
        for _ in range(6)
    ]
    assert statuses == [401] * 5 + [429]
    # a key guesser is charged too, and another address has its own budget
    r = h.client.simulate_get("/docs", remote_addr="10.0.0.1")
    assert r.status_code == 429
    assert h.client.simulate_get("/docs", remote_addr="10.0.0.2").status_code == 200
    assert h.client.simulate_get("/health", remote_addr="10.0.0.1").status_code == 200  # exempt


def test_an_ipv6_client_is_limited_by_its_64_prefix_and_a_mapped_ipv4_as_ipv4() -> None:
    """Security review: each IPv6 address was a bucket of its own (a host picks any of its
    /64's 2^64), and ``::ffff:198.51.100.9`` a second bucket beside ``198.51.100.9``."""
    h = frozen(anon_rate_limit_burst=3)
    statuses = [h.client.simulate_post(EVENTS, json=EVENT, remote_addr=f"2001:db8:0:7::{i:x}").status_code
                for i in range(4)]  # fmt: skip
    assert statuses == [401] * 3 + [429]
    assert h.client.simulate_post(EVENTS, json=EVENT, remote_addr="2001:db8:0:8::1").status_code == 401
    mapped = [h.client.simulate_post(EVENTS, json=EVENT, remote_addr=a).status_code
              for a in ("198.51.100.9", "::ffff:198.51.100.9") * 2]  # fmt: skip
    assert mapped == [401] * 3 + [429]
    h = frozen(anon_rate_limit_burst=3)  # an open route: the anonymous bucket, same rule
    statuses = [h.client.simulate_get("/docs", remote_addr=f"2001:db8:0:9::{i}").status_code
                for i in range(4)]  # fmt: skip
    assert statuses == [200] * 3 + [429]
    h = frozen(auth="disabled", rate_limit_burst=2)  # keys off: the address bucket, same rule
    statuses = [h.client.simulate_post(EVENTS, json=EVENT, remote_addr=f"2001:db8::{i}").status_code
                for i in range(3)]  # fmt: skip
    assert statuses == [202, 202, 429]


# --- overload ------------------------------------------------------------------------------
def test_ingest_answers_503_under_backlog_with_retry_after_from_drain_rate() -> None:
    backlog = FixedBacklog(0)
    h = ApiHarness(backlog=backlog, overload_queue_depth=1000)
    key = h.headers("ingest", "read")
    assert h.client.simulate_post(EVENTS, json=EVENT, headers=key).status_code == 202
    backlog.set(depth=1500, drain_rate=50.0)
    for path, body in ((EVENTS, EVENT), (BATCH, {"events": [EVENT]}), ("/analytics/events", EVENT)):
        r = h.client.simulate_post(path, json=body, headers=key)
        problem = assert_problem(r, 503)
        assert r.headers["retry-after"] == "11" and problem["retry_after"] == 11  # 501 / 50 per s
    backlog.set(depth=1500, drain_rate=None)
    r = h.client.simulate_post(EVENTS, json=EVENT, headers=key)
    assert r.headers["retry-after"] == str(h.settings.overload_retry_after_max_s)
    assert h.client.simulate_get("/health").status_code == 200  # reads are not refused


# --- input limits --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def h() -> ApiHarness:
    return ApiHarness(max_body_bytes=4096, max_decompressed_bytes=64 * 1024, max_batch_events=5)


def post(h: ApiHarness, path: str, body: bytes, **headers: str):  # type: ignore[no-untyped-def]
    hdrs = {"Content-Type": "application/json", **h.headers(), **headers}
    return h.client.simulate_post(path, body=body, headers=hdrs)


def test_gzip_body_is_accepted(h: ApiHarness) -> None:
    r = post(h, EVENTS, gzip.compress(json.dumps(EVENT).encode()), **{"Content-Encoding": "gzip"})
    assert r.status_code == 202, r.text


def test_gzip_bomb_is_stopped(h: ApiHarness) -> None:
    bomb = gzip.compress(b" " * (1024 * 1024 * 100), compresslevel=9)  # 100 MB of spaces
    assert len(bomb) < 4096 * 40
    small_bomb = gzip.compress(b" " * (1024 * 1024))
    assert len(small_bomb) <= 4096
    body = assert_problem(post(h, BATCH, small_bomb, **{"Content-Encoding": "gzip"}), 413)
    assert body["limit"] == 64 * 1024
    # A single event inflates at most to the body limit, as it could be sent plain.
    for path in (EVENTS, "/analytics/events"):  # the legacy route too
        body = assert_problem(post(h, path, small_bomb, **{"Content-Encoding": "gzip"}), 413)
        assert body["limit"] == 4096


def test_bad_gzip_is_400_and_other_encodings_415(h: ApiHarness) -> None:
    assert_problem(post(h, EVENTS, b"not gzip", **{"Content-Encoding": "gzip"}), 400)
    truncated = gzip.compress(json.dumps(EVENT).encode())[:-12]
    assert_problem(post(h, EVENTS, truncated, **{"Content-Encoding": "gzip"}), 400)
    deflated = zlib.compress(json.dumps(EVENT).encode())
    assert_problem(post(h, EVENTS, deflated, **{"Content-Encoding": "br"}), 415)


def test_size_type_count_and_depth_limits(h: ApiHarness) -> None:
    assert_problem(post(h, EVENTS, b"{" + b" " * 5000 + b"}"), 413)
    r = h.client.simulate_post(EVENTS, body=b"x", headers={"Content-Type": "text/plain", **h.headers()})
    assert_problem(r, 415)
    body = assert_problem(post(h, BATCH, json.dumps({"events": [EVENT] * 6}).encode()), 413)
    assert body["limit"] == 5
    assert_problem(post(h, EVENTS, b"[" * 3000 + b"]" * 3000), 413)  # over the body size
    big = ApiHarness(max_body_bytes=1024 * 1024)
    deep = b"[" * 200_000 + b"]" * 200_000
    r = big.client.simulate_post(EVENTS, body=deep[: 1024 * 1000],
                                 headers={"Content-Type": "application/json", **big.headers()})  # fmt: skip
    assert_problem(r, 400)
    nested = {**EVENT, "metadata": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}}
    r = big.client.simulate_post(EVENTS, json=nested, headers=big.headers())
    assert_problem(r, 422)



def sized(doc: object, size: int) -> bytes:
    """``doc`` as JSON of exactly ``size`` bytes (padded with trailing whitespace)."""
    raw = json.dumps(doc).encode()
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))


def test_a_body_of_exactly_the_limit_is_accepted_one_byte_more_is_413(h: ApiHarness) -> None:
    """Mutation QA: the size limit is inclusive. A client whose batch is exactly
    ``max_body_bytes`` long (Content-Length given, read by Falcon: the lane never takes a
    batch) had its events refused with a 413 when the check was ``>=``."""
    assert post(h, BATCH, sized({"events": [EVENT]}, 4096)).status_code == 202
    body = assert_problem(post(h, BATCH, sized({"events": [EVENT]}, 4097)), 413)
    assert body["limit"] == 4096


def test_a_body_without_content_type_is_415_and_not_queued() -> None:
    """Mutation QA: a POST without Content-Type is refused (415) like any other type, not
    parsed as JSON anyway: the contract is ``application/json`` only."""
    h = ApiHarness()
    r = h.client.simulate_post(EVENTS, body=json.dumps(EVENT).encode(), headers=h.headers())
    body = assert_problem(r, 415)
    assert body["type"].endswith(":unsupported-media-type") and "none" in body["detail"]
    assert h.container.task_queue.events == []  # type: ignore[attr-defined]


def test_x_gzip_is_gzip(h: ApiHarness) -> None:
    """Mutation QA: ``Content-Encoding: x-gzip`` (RFC 9110 8.4.1.3: a recipient SHOULD
    treat it as gzip; older clients still send it) is inflated, not refused with a 415."""
    zipped = gzip.compress(json.dumps(EVENT).encode())
    r = post(h, EVENTS, zipped, **{"Content-Encoding": "x-gzip"})
    assert r.status_code == 202, r.text
    r = post(h, EVENTS, zipped, **{"Content-Encoding": " X-GZIP "})
    assert r.status_code == 202, r.text


def test_the_decompressed_cap_is_inclusive_to_the_byte(h: ApiHarness) -> None:
    """Mutation QA: a gzip body inflating to exactly ``max_decompressed_bytes`` is
    accepted and one byte more is 413; a cap off by one let one byte past the limit in."""
    for path, doc, cap in ((BATCH, {"events": [EVENT]}, 64 * 1024), (EVENTS, EVENT, 4096)):
        at_cap = gzip.compress(sized(doc, cap))
        assert post(h, path, at_cap, **{"Content-Encoding": "gzip"}).status_code == 202
        over = gzip.compress(sized(doc, cap + 1))
        body = assert_problem(post(h, path, over, **{"Content-Encoding": "gzip"}), 413)
        assert body["type"].endswith(":decompressed-too-large") and body["limit"] == cap


def test_a_chunked_body_without_content_length_is_read_whole() -> None:
    """Mutation QA: a chunked request has no Content-Length, and Falcon's bounded stream
    reads nothing then: reading it that way turned every chunked event into a 400
    ("malformed") and lost it. The server's own stream (gunicorn decodes the chunks) is
    read instead, still bounded by the size limit."""
    import falcon.testing  # noqa: PLC0415

    h = ApiHarness(max_body_bytes=4096)

    def call(raw: bytes) -> tuple[str, bytes]:
        environ = falcon.testing.create_environ(
            path=EVENTS, method="POST", body=raw,
            headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked",
                     **h.headers()},
        )  # fmt: skip
        environ.pop("CONTENT_LENGTH", None)  # what a chunked request looks like
        start = falcon.testing.StartResponseMock()
        out = b"".join(h.client.app(environ, start))
        return start.status, out

    status, out = call(json.dumps(EVENT).encode())
    assert status.startswith("202"), out
    assert len(h.container.task_queue.events) == 1  # type: ignore[attr-defined]
    status, out = call(sized(EVENT, 4097))
    assert status.startswith("413"), out

# --- headers -------------------------------------------------------------------------------
SECURITY = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "x-xss-protection": "0",
}


def test_security_headers_on_every_response_including_errors() -> None:
    h = ApiHarness(hsts_seconds=31536000)
    responses = [
        h.client.simulate_get("/health"),
        h.client.simulate_get("/nowhere"),  # 404
        h.client.simulate_put(EVENTS),  # 405
        h.client.simulate_post(EVENTS, json=EVENT),  # 401
        h.client.simulate_post(EVENTS, json={"x": 1}, headers=h.headers()),  # 422
        h.client.simulate_get("/api/v1/openapi.json"),
    ]
    for r in responses:
        for name, value in SECURITY.items():
            assert r.headers[name] == value, (r.status_code, name)
        assert r.headers["content-security-policy"].startswith("default-src 'none'")
        assert r.headers["strict-transport-security"].startswith("max-age=31536000")
        assert r.headers["x-correlation-id"]
    assert "strict-transport-security" not in ApiHarness().client.simulate_get("/health").headers


def test_unexpected_errors_are_problem_json_with_headers() -> None:
    class Exploding:
        def enqueue_events(self, events):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    h = ApiHarness(task_queue=Exploding())
    r = h.client.simulate_post(EVENTS, json=EVENT, headers=h.headers())
    assert_problem(r, 500)
    assert r.headers["x-frame-options"] == "DENY"
    assert "boom" not in r.text


def test_docs_page_has_its_own_csp_allowing_only_self() -> None:
    r = ApiHarness().client.simulate_get("/docs")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "http" not in csp
    assert "frame-ancestors 'none'" in csp
    assert b"<script>" not in r.content and b"https://" not in r.content


def test_cors_allowed_origin_preflight_and_vary() -> None:
    h = ApiHarness(cors_origins="https://app.example, https://other.example")
    pre = h.client.simulate_options(EVENTS, headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})  # fmt: skip
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    assert "Origin" in pre.headers["vary"]
    r = h.client.simulate_post(EVENTS, json=EVENT, headers={"Origin": "https://other.example", **h.headers()})
    assert r.headers["access-control-allow-origin"] == "https://other.example"
    assert "x-correlation-id" in r.headers["access-control-expose-headers"].lower()
    assert "Origin" in r.headers["vary"]
    evil = h.client.simulate_options(EVENTS, headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})  # fmt: skip
    assert "access-control-allow-origin" not in evil.headers
    r = h.client.simulate_get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers and "Origin" in r.headers["vary"]


def test_no_cors_headers_without_configured_origins() -> None:
    h = ApiHarness()
    r = h.client.simulate_get("/health", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in r.headers
    assert "vary" not in r.headers  # nothing depends on Origin
    pre = h.client.simulate_options(EVENTS, headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})  # fmt: skip
    assert "access-control-allow-origin" not in pre.headers


def test_metrics_can_be_protected() -> None:
    h = ApiHarness(metrics_auth="required")
    if ("GET", "/metrics") not in {(m, t) for m, t, _ in iter_routes(h.app)}:
        pytest.skip("no /metrics route on this branch yet")
    assert h.client.simulate_get("/metrics").status_code == 401
    assert h.client.simulate_get("/metrics", headers=h.headers("ingest")).status_code == 403
    assert h.client.simulate_get("/metrics", headers=h.headers("read")).status_code == 200
    assert ApiHarness().client.simulate_get("/metrics").status_code == 200
