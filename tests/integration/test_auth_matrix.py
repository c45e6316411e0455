"""Every route of the app x {no key, wrong key, revoked key, each scope}.

The route list comes from the app's router, so a route added later is tried too, and a
route that the policy table does not name fails here instead of silently needing admin.
"""

from __future__ import annotations

import re

import pytest

from analytics.adapters.memory import FixedBacklog
from analytics.domain.auth import SCOPES
from analytics.entrypoints.api.openapi import iter_routes
from analytics.entrypoints.api.security import access_for
from tests.support import ApiHarness

pytestmark = pytest.mark.integration

SAMPLE_PARAMS = {"period": "day", "task_id": "00000000-0000-0000-0000-000000000000",
                 "name": "docs.js", "message_id": "00000000-0000-0000-0000-000000000000"}  # fmt: skip
EVENT = {"event_type": "page_view", "user_id": "u1", "session_id": "s1"}


@pytest.fixture(scope="module")
def harness() -> ApiHarness:
    return ApiHarness(backlog=FixedBacklog(0), anon_rate_limit_burst=1_000_000)


def _routes(h: ApiHarness) -> list[tuple[str, str]]:
    return sorted({(m, t) for m, t, _ in iter_routes(h.app)}, key=lambda r: (r[1], r[0]))


def _path(template: str) -> str:
    return re.sub(r"\{([^}:]+)(?::[^}]*)?\}", lambda m: SAMPLE_PARAMS.get(m.group(1), "x"), template)


def _call(h: ApiHarness, method: str, template: str, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    body = {"events": [EVENT]} if template.endswith("/batch") else EVENT
    kwargs = {"json": body} if method in ("POST", "PUT", "PATCH") else {}
    return h.client.simulate_request(method, _path(template), headers=headers, **kwargs)


def test_every_route_is_named_by_the_policy(harness: ApiHarness) -> None:
    unnamed = [(m, t) for m, t in _routes(harness) if not access_for(m, t)[1]]
    assert not unnamed, f"add these routes to security.POLICY: {unnamed}"


def test_the_known_routes_are_all_there(harness: ApiHarness) -> None:
    routes = _routes(harness)
    for route in [("POST", "/api/v1/analytics/events"), ("POST", "/api/v1/analytics/events/batch"),
                  ("POST", "/analytics/events"), ("GET", "/health"),
                  ("GET", "/api/v1/openapi.json"), ("GET", "/docs")]:  # fmt: skip
        assert route in routes


def test_matrix(harness: ApiHarness) -> None:
    revoked = harness.key()
    harness.keys.revoke(revoked.split("_")[1], harness.container.clock.now())
    wrong = "ak_000000000000_" + "A" * 43
    keys = {scope: harness.key(scope) for scope in SCOPES}
    failures = []
    for method, template in _routes(harness):
        access, _ = access_for(method, template)
        if access == "metrics":
            access = "open"  # metrics_auth=open here; the protected case has its own test
        for label, headers in [
            ("no key", {}),
            ("wrong key", {"Authorization": f"Bearer {wrong}"}),
            ("revoked key", {"X-API-Key": revoked}),
            ("garbage", {"Authorization": "Basic dXNlcjpwYXNz"}),
        ]:
            r = _call(harness, method, template, headers)
            want_401 = access != "open"
            if want_401 != (r.status_code == 401):
                failures.append((method, template, label, r.status_code))
            if r.status_code == 401:
                assert r.headers["content-type"] == "application/problem+json"
                assert r.headers["www-authenticate"].startswith("Bearer")
        for scope, key in keys.items():
            r = _call(harness, method, template, {"Authorization": f"Bearer {key}"})
            if r.status_code == 401:
                failures.append((method, template, scope, 401))
            want_403 = access not in ("open", scope)
            if want_403 != (r.status_code == 403):
                failures.append((method, template, scope, r.status_code))
            if r.status_code == 403:
                assert r.headers["content-type"] == "application/problem+json"
                assert r.json["scope"] == access
    assert not failures, failures


def test_x_api_key_and_bearer_are_both_accepted(harness: ApiHarness) -> None:
    key = harness.key("ingest")
    for headers in ({"X-API-Key": key}, {"Authorization": f"Bearer {key}"},
                    {"Authorization": f"bearer {key}"}):  # fmt: skip
        r = harness.client.simulate_post("/api/v1/analytics/events", json=EVENT, headers=headers)
        assert r.status_code == 202, r.text
    # Only Bearer: a valid key under another scheme is refused, on the lane and on Falcon's
    # routes (mutation QA: any scheme was accepted and no test failed), even beside a
    # valid X-API-Key, since Authorization is the one checked.
    for headers in ({"Authorization": f"Token {key}"}, {"Authorization": f"Basic {key}"},
                    {"Authorization": f"Token {key}", "X-API-Key": key}):  # fmt: skip
        for path, body in (("/api/v1/analytics/events", EVENT),
                           ("/api/v1/analytics/events/batch", {"events": [EVENT]})):  # fmt: skip
            r = harness.client.simulate_post(path, json=body, headers=headers)
            assert r.status_code == 401, (path, headers, r.text)


def test_health_is_open_and_auth_can_be_disabled() -> None:
    h = ApiHarness()
    assert h.client.simulate_get("/health").status_code == 200
    off = ApiHarness(auth="disabled")
    assert off.client.simulate_post("/api/v1/analytics/events", json=EVENT).status_code == 202


@pytest.mark.parametrize(
    ("method", "template", "access"),
    [
        ("POST", "/api/v1/analytics/events", "ingest"),
        ("POST", "/api/v1/analytics/events/batch", "ingest"),
        ("POST", "/analytics/events", "ingest"),
        ("GET", "/api/v1/analytics/events/search", "read"),
        ("GET", "/api/v1/analytics/dashboard/metrics", "read"),
        ("GET", "/api/v1/analytics/aggregations/{period}", "read"),
        ("POST", "/api/v1/analytics/aggregations/{period}/generate", "admin"),
        ("GET", "/api/v1/analytics/tasks/{task_id}/status", "read"),
        ("GET", "/api/v1/admin/dlq", "admin"),
        ("POST", "/api/v1/admin/dlq/replay", "admin"),
        ("GET", "/api/v1/admin/dlq/{letter_id}", "admin"),
        ("GET", "/health", "open"),
        ("GET", "/health/detailed", "read"),
        ("GET", "/metrics", "metrics"),
        ("GET", "/api/v1/openapi.json", "open"),
        ("GET", "/docs", "open"),
        ("POST", "/api/v1/analytics/something-new", "admin"),  # unnamed: fails closed
    ],
)
def test_policy_of_every_spec_route(method: str, template: str, access: str) -> None:
    assert access_for(method, template)[0] == access
