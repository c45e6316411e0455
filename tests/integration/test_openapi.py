"""The OpenAPI document: valid 3.1, every route of the router, security and errors per route."""

from __future__ import annotations

import pytest

from analytics.entrypoints.api.openapi import iter_routes
from analytics.entrypoints.api.security import access_for
from tests.support import ApiHarness

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def harness() -> ApiHarness:
    return ApiHarness()


@pytest.fixture(scope="module")
def doc(harness: ApiHarness) -> dict:  # type: ignore[type-arg]
    r = harness.client.simulate_get("/api/v1/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    return r.json  # type: ignore[no-any-return]


def test_is_a_valid_openapi_31_document(doc: dict) -> None:  # type: ignore[type-arg]
    validator = pytest.importorskip("openapi_spec_validator")
    assert doc["openapi"] == "3.1.0"
    validator.validate(doc)


def test_every_route_and_method_is_described(harness: ApiHarness, doc: dict) -> None:  # type: ignore[type-arg]
    routes = {(m, t) for m, t, _ in iter_routes(harness.app)}
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert routes == documented
    undocumented = [(m, p) for p, ops in doc["paths"].items() for m, op in ops.items()
                    if op.get("x-undocumented")]  # fmt: skip
    assert not undocumented, f"describe these in openapi.OPERATIONS: {undocumented}"
    op_ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(op_ids) == len(set(op_ids))


def test_security_matches_the_policy(doc: dict) -> None:  # type: ignore[type-arg]
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKeyHeader"]["in"] == "header" and schemes["apiKeyHeader"]["name"] == "X-API-Key"
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            access, _ = access_for(method.upper(), path)
            if access == "open":
                assert op["security"] == []
            elif access != "metrics":
                assert op["security"] == [{"bearerAuth": [access]}, {"apiKeyHeader": [access]}]
                for status in ("401", "403", "429"):
                    content = op["responses"][status]["content"]
                    assert content["application/problem+json"]["schema"] == {
                        "$ref": "#/components/schemas/Problem"
                    }


def test_schemas_come_from_the_validating_structs(doc: dict) -> None:  # type: ignore[type-arg]
    schemas = doc["components"]["schemas"]
    event = schemas["EventIn"]
    assert set(event["required"]) == {"event_type", "user_id", "session_id"}
    assert event["additionalProperties"] is False  # forbid_unknown_fields
    assert event["properties"]["event_type"]["pattern"].startswith("^[a-z]")
    for model in ("EventIn", "LegacyEventIn"):  # "price": 19.99 is accepted: say so
        kinds = [s["type"] for s in schemas[model]["properties"]["price"]["anyOf"]]
        assert kinds == ["string", "number", "null"], kinds
    batch = schemas["BatchIn"]["properties"]["events"]
    assert batch["items"] == {"$ref": "#/components/schemas/EventIn"} and batch["maxItems"] == 500
    ingest = doc["paths"]["/api/v1/analytics/events"]["post"]
    assert ingest["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EventIn"
    }
    assert set(ingest["responses"]) >= {"202", "400", "401", "403", "413", "415", "422", "429", "503"}
    assert doc["paths"]["/analytics/events"]["post"]["deprecated"] is True
    for ops in doc["paths"].values():
        for op in ops.values():
            for param in op.get("parameters", []):
                assert param["schema"] and param["in"] in ("path", "query", "header")


def test_the_headers_and_statuses_the_service_sends_are_declared(harness: ApiHarness, doc: dict) -> None:  # type: ignore[type-arg]
    """QA against the running service: 304, ETag, Cache-Control, the RateLimit headers,
    the legacy route's Deprecation/Link and the problem's `parameter` were sent but not in
    the document. Each is checked here against what the app actually answers."""
    paths = doc["paths"]
    agg = paths["/api/v1/analytics/aggregations/{period}"]["get"]["responses"]
    assert {"ETag", "Cache-Control", "RateLimit-Policy"} <= set(agg["200"]["headers"])
    assert "304" in agg and "ETag" in agg["304"]["headers"]
    search = paths["/api/v1/analytics/events/search"]["get"]["responses"]
    assert "304" not in search and "ETag" not in search["200"]["headers"]  # never cached
    legacy = paths["/analytics/events"]["post"]["responses"]
    assert all({"Deprecation", "Link"} <= set(r["headers"]) for r in legacy.values())
    assert "parameter" in doc["components"]["schemas"]["Problem"]["properties"]
    headers = harness.headers()
    url = "/api/v1/analytics/aggregations/day"
    params = {"start": "2026-01-01", "end": "2026-01-03"}
    first = harness.client.simulate_get(url, params=params, headers=headers)
    assert first.status_code == 200 and first.headers["ETag"] and first.headers["Cache-Control"]
    again = harness.client.simulate_get(
        url, params=params, headers={**headers, "If-None-Match": first.headers["ETag"]})  # fmt: skip
    assert again.status_code == 304
    found = harness.client.simulate_get("/api/v1/analytics/events/search", headers=headers,
                                        params={"start": "2026-01-01T00:00:00Z",
                                                "end": "2026-01-02T00:00:00Z"})  # fmt: skip
    assert found.status_code == 200 and "ETag" not in found.headers
    bad = harness.client.simulate_get(url, params={**params, "x": "1"}, headers=headers)
    assert bad.json["parameter"] == "x"


def test_answers_whose_shape_was_a_bare_object_are_described(doc: dict) -> None:  # type: ignore[type-arg]
    """QA: the admin answers were {"type": "object"}, bucket items {}, task status free text."""
    schemas, paths = doc["components"]["schemas"], doc["paths"]
    ok = paths["/api/v1/admin/dlq"]["get"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"] == {"$ref": "#/components/schemas/DeadLetterListOut"}
    assert set(schemas["DeadLetterOut"]["required"]) >= {"id", "error_type", "traceback"}
    assert "skipped" in schemas["SelectionDoneOut"]["properties"]
    assert schemas["AggregationOut"]["properties"]["buckets"]["items"] == {
        "$ref": "#/components/schemas/BucketOut"}  # fmt: skip
    assert "unique_users" in schemas["BucketOut"]["properties"]
    assert schemas["TaskStatus"]["properties"]["status"]["enum"] == [
        "queued", "running", "retrying", "succeeded", "failed", "skipped"]  # fmt: skip


def _validator(doc: dict, schema: dict):  # type: ignore[no-untyped-def,type-arg]
    """A JSON Schema validator for ``schema``, its ``#/components/...`` refs resolved in ``doc``."""
    jsonschema = pytest.importorskip("jsonschema")
    return jsonschema.Draft202012Validator({**schema, "components": doc["components"]})


def test_the_batch_422_schema_fits_both_kinds_of_422(harness: ApiHarness, doc: dict) -> None:  # type: ignore[type-arg]
    """QA (schemathesis): the schema named only "every event rejected" (with the batch
    receipt), so every 422 for a body that is not a batch broke the documented contract."""
    op = doc["paths"]["/api/v1/analytics/events/batch"]["post"]
    validator = _validator(doc, op["responses"]["422"]["content"]["application/problem+json"]["schema"])
    bodies = [{}, {"events": []}, {"events": None}, {"events": [{"event_type": "x"}], "extra": 1},
              {"events": [{"event_type": "x"}]}]  # fmt: skip
    kinds = set()
    for body in bodies:
        r = harness.client.simulate_post("/api/v1/analytics/events/batch", json=body,
                                         headers=harness.headers())  # fmt: skip
        assert r.status_code == 422, (body, r.json)
        errors = sorted(e.message for e in validator.iter_errors(r.json))
        assert not errors, (body, r.json, errors)
        kinds.add("results" in r.json)
    assert kinds == {True, False}  # both shapes were seen


def test_the_price_schema_refuses_what_the_service_refuses(doc: dict) -> None:  # type: ignore[type-arg]
    price = doc["components"]["schemas"]["EventIn"]["properties"]["price"]
    validator = _validator(doc, price)
    for ok in ("19.99", "1E+3", "-0", 19.99, None):
        assert validator.is_valid(ok), ok
    for bad in ("1_0", " 7.5", "+5", ".5", "\u0661\u0662", "19.99\n", "007"):
        assert not validator.is_valid(bad), bad
