"""HTTP caching of GETs: ETag from content, Cache-Control by kind and by key policy,
If-None-Match -> 304, malformed If-None-Match ignored, Vary on the key headers."""

from __future__ import annotations

from typing import ClassVar

import falcon
import falcon.testing
import pytest

from analytics.entrypoints.api.http_cache import (
    HttpCacheMiddleware,
    mark,
    parse_if_none_match,
    strong_etag,
)
from analytics.settings import Settings

AGG = "/api/v1/analytics/aggregations/day"


class Agg:
    body: ClassVar[dict[str, list[int]]] = {"buckets": [1, 2, 3]}

    def on_get(self, req: falcon.Request, resp: falcon.Response, period: str) -> None:
        if req.get_param("closed"):
            mark(req, "closed")
        resp.set_header("Vary", "Origin")
        resp.media = self.body

    def on_post(self, req: falcon.Request, resp: falcon.Response, period: str) -> None:
        resp.media = {"ok": True}


class Plain:
    def __init__(self, status: str = falcon.HTTP_200) -> None:
        self.status = status

    def on_get(self, req: falcon.Request, resp: falcon.Response, **_: str) -> None:
        resp.status = self.status
        resp.media = {"user_id": "u1"}


def client(**env: str) -> falcon.testing.TestClient:
    app = falcon.App(middleware=[HttpCacheMiddleware(Settings.from_env(env))])
    app.add_route("/api/v1/analytics/aggregations/{period}", Agg())
    app.add_route("/api/v1/analytics/dashboard/metrics", Plain())
    app.add_route("/api/v1/analytics/events/search", Plain())
    app.add_route("/api/v1/analytics/tasks/{task_id}/status", Plain())
    app.add_route("/docs", Plain())
    app.add_route("/broken", Plain(falcon.HTTP_503))
    return falcon.testing.TestClient(app)


@pytest.mark.parametrize(
    ("value", "tags"),
    [
        ('"abc"', ['"abc"']),
        ('W/"abc"', ['"abc"']),
        (' "a" , W/"b",  "c" ', ['"a"', '"b"', '"c"']),
        ("*", ["*"]),
        ('""', ['""']),
        (None, None),
        ("abc", None),  # unquoted
        ('"a" "b"', None),  # no comma
        ('"a",', None),  # trailing comma
        ('"a', None),
        ('w/"a"', None),  # W is case-sensitive
        ('"a"b"', None),
        ('*, "a"', None),
        ("", None),
    ],
)
def test_if_none_match_grammar(value: str | None, tags: list[str] | None) -> None:
    assert parse_if_none_match(value) == tags


def test_closed_buckets_are_private_when_a_key_is_needed_and_get_a_content_etag() -> None:
    c = client()
    r = c.simulate_get(AGG, params={"closed": "1"})
    assert r.status_code == 200
    assert r.headers["Cache-Control"] == "private, max-age=86400"
    assert r.headers["ETag"] == strong_etag(r.content)
    assert not r.headers["ETag"].startswith("W/")
    assert r.headers["Vary"] == "Origin, Authorization, X-API-Key"


def test_public_only_when_configured_or_when_no_key_is_needed() -> None:
    r = client(ANALYTICS_HTTP_CACHE_PUBLIC="true").simulate_get(AGG, params={"closed": "1"})
    assert r.headers["Cache-Control"] == "public, max-age=86400"
    # ... and only for closed buckets: the open period stays private.
    r = client(ANALYTICS_HTTP_CACHE_PUBLIC="true").simulate_get(AGG)
    assert r.headers["Cache-Control"] == "private, max-age=10"


def test_public_when_keys_are_off() -> None:
    if "auth" not in Settings.model_fields:
        pytest.skip("the auth setting comes with API keys (security)")
    r = client(ANALYTICS_AUTH="disabled").simulate_get(AGG, params={"closed": "1"})
    assert r.headers["Cache-Control"] == "public, max-age=86400"
    assert "Authorization" not in r.headers.get("Vary", "")


def test_open_period_and_dashboard_get_short_max_age() -> None:
    c = client(
        ANALYTICS_HTTP_CACHE_OPEN_MAX_AGE_S="7", ANALYTICS_HTTP_CACHE_DASHBOARD_MAX_AGE_S="3"
    )
    assert c.simulate_get(AGG).headers["Cache-Control"] == "private, max-age=7"
    r = c.simulate_get("/api/v1/analytics/dashboard/metrics")
    assert r.headers["Cache-Control"] == "private, max-age=3" and "ETag" in r.headers


def test_search_and_task_status_are_not_stored() -> None:
    c = client()
    r = c.simulate_get("/api/v1/analytics/events/search")
    assert r.headers["Cache-Control"] == "private, no-store" and "ETag" not in r.headers
    r = c.simulate_get("/api/v1/analytics/tasks/abc/status")
    assert r.headers["Cache-Control"] == "no-store" and "ETag" not in r.headers


def test_static_docs_are_public() -> None:
    r = client().simulate_get("/docs")
    assert r.headers["Cache-Control"] == "public, max-age=3600" and "ETag" in r.headers


def test_if_none_match_answers_304_without_a_body() -> None:
    c = client()
    first = c.simulate_get(AGG, params={"closed": "1"})
    etag = first.headers["ETag"]
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        r = c.simulate_get(AGG, params={"closed": "1"}, headers={"If-None-Match": header})
        assert r.status_code == 304, header
        assert r.content == b""
        assert r.headers["ETag"] == etag
        assert r.headers["Cache-Control"] == "private, max-age=86400"
    r = c.simulate_get(AGG, params={"closed": "1"}, headers={"If-None-Match": '"stale"'})
    assert r.status_code == 200 and r.content == first.content


def test_new_content_gets_a_new_etag(monkeypatch: pytest.MonkeyPatch) -> None:
    c = client()
    etag = c.simulate_get(AGG).headers["ETag"]
    monkeypatch.setattr(Agg, "body", {"buckets": [1, 2, 4]})
    r = c.simulate_get(AGG, headers={"If-None-Match": etag})
    assert r.status_code == 200 and r.headers["ETag"] != etag


@pytest.mark.parametrize("bad", ["garbage", '"unterminated', 'W/ "x"', "\x7f", '"a" "b"', ","])
def test_malformed_if_none_match_is_ignored(bad: str) -> None:
    r = client().simulate_get(AGG, headers={"If-None-Match": bad})
    assert r.status_code == 200 and r.json == Agg.body


def test_errors_and_non_get_are_not_cached() -> None:
    c = client()
    r = c.simulate_get("/broken")
    assert r.status_code == 503 and r.headers["Cache-Control"] == "no-store"
    r = c.simulate_post(AGG)
    assert "ETag" not in r.headers and "Cache-Control" not in r.headers
