"""The OpenAPI 3.1 document, generated from the msgspec types the API validates with.

Schemas come from :func:`msgspec.json.schema_components` over the very structs the
decoders use (``EventIn``, ``LegacyEventIn``, ``BatchIn``...), so the contract cannot
drift from the validation. Operations are described in :data:`OPERATIONS`; routes are
taken from the app's router, so a route nobody described still appears (marked
``x-undocumented``, which a test forbids) instead of silently missing.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, get_args

import falcon
import msgspec

from analytics.application.queries import BucketOut
from analytics.domain import events as ev
from analytics.domain import search as search_domain
from analytics.domain import tasks as tasks_domain
from analytics.domain.tasks import TaskState
from analytics.domain.validation import PRICE_TEXT
from analytics.entrypoints.api.http_cache import ROUTE_KINDS
from analytics.entrypoints.api.security import access_for

PROBLEM = "application/problem+json"
JSON = "application/json"
REF = "#/components/schemas/{name}"


class Problem(msgspec.Struct, kw_only=True):
    """RFC 9457 problem details; extension members depend on the problem type."""

    type: str
    title: str
    status: int
    instance: str
    correlation_id: str | None
    detail: str | None = None


class FieldErrorOut(msgspec.Struct):
    field: str
    rule: str
    message: str


class Health(msgspec.Struct):
    status: str


@dataclass(frozen=True)
class Op:
    summary: str
    tags: tuple[str, ...]
    ok: int = 200
    ok_type: Any = None  # a msgspec-able type, or None for a free-form body
    ok_media: str = JSON
    body: Any = None  # request body type
    errors: tuple[int, ...] = ()
    params: tuple[dict[str, Any], ...] = ()
    description: str = ""
    deprecated: bool = False
    extra_ok: dict[int, tuple[Any, str]] = field(default_factory=dict)


_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:@+\-]{0,127}$"
_EVENT_TYPE = r"^[a-z][a-z0-9_.:\-]{0,63}$"
INGEST_ERRORS = (400, 401, 403, 413, 415, 422, 429, 503)
READ_ERRORS = (400, 401, 403, 429, 503)  # 503: a store, cache or broker is down
_ERROR_TEXT = {
    400: "Malformed body or invalid query parameter.",
    401: "Missing, malformed, unknown or revoked API key.",
    403: "The key lacks the scope this operation needs.",
    404: "No such resource.",
    405: "Method not allowed.",
    413: "Body, decompressed body or batch too large.",
    415: "Content-Type is not application/json, or Content-Encoding is not gzip/identity.",
    422: "Validation failed; every failing field is listed in `errors`.",
    429: "Rate limit exceeded; see Retry-After and the RateLimit-* headers.",
    503: "Overloaded (queue backlog) or a dependency is down; see Retry-After.",
}


def _path_param(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": schema}  # fmt: skip


def _query(
    name: str, description: str, schema: dict[str, Any], *, required: bool = False
) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema}  # fmt: skip


_PERIOD = _path_param(
    "period", "Bucket size.", {"type": "string", "enum": ["hour", "day", "week", "month"]}
)
_CORRELATION_HEADER = {
    "name": "X-Correlation-ID",
    "in": "header",
    "required": False,
    # Any value is accepted (never refused): a pattern here would say a malformed one is
    # an error, and schemathesis rightly reported every operation accepting one (QA).
    "description": "Your correlation id, echoed back and logged when it matches "
    "`^[A-Za-z0-9._-]{1,64}$`; any other value is replaced by a new id, never refused.",
    "schema": {"type": "string"},
}
QUEUES = ("high_priority", "aggregations", "notifications", "maintenance")


OPERATIONS: dict[tuple[str, str], Op] = {
    ("POST", "/api/v1/analytics/events"): Op(
        "Send one event",
        ("ingest",),
        202,
        ev.Receipt,
        body=ev.EventIn,
        errors=INGEST_ERRORS,
        description="Validates the event and queues it; 202 means durably queued.",
    ),
    ("POST", "/api/v1/analytics/events/batch"): Op(
        "Send many events",
        ("ingest",),
        202,
        ev.BatchReceipt,
        body=ev.BatchIn,
        errors=INGEST_ERRORS,
        description="Each event is validated on its own. When every event was rejected: 422, "
        "a problem document that also carries the BatchReceipt members (each event's "
        "errors in `results`). Rate limits count every event of the batch.",
    ),
    ("POST", "/analytics/events"): Op(
        "Send one event (legacy route)",
        ("ingest",),
        202,
        ev.Receipt,
        body=ev.LegacyEventIn,
        errors=INGEST_ERRORS,
        deprecated=True,
        description="The old route of the seed's migration guide; use /api/v1/analytics/events.",
    ),
    ("GET", "/api/v1/analytics/events/{event_id}"): Op(
        "One stored event by its id",
        ("read",),
        200,
        ev.Event,
        errors=(*READ_ERRORS, 404),
        description="The event as a search returns it; 404 while it is not stored (not "
        "received, or a worker has not stored it yet: seconds after its 202).",
        params=(_path_param("event_id", "The event's id (a UUID).", {"type": "string"}),),
    ),
    ("GET", "/api/v1/analytics/events/search"): Op(
        "Search events",
        ("read",),
        200,
        search_domain.SearchPage,
        errors=READ_ERRORS,
        description="Equality filters and a half-open time range [start, end); ascending by "
        "(timestamp, event_id); opaque cursor paging (next_cursor).",
        params=(
            _query("event_type", "Exact event type.", {"type": "string", "pattern": _EVENT_TYPE}),
            _query("user_id", "Exact user id.", {"type": "string", "pattern": _ID}),
            _query("session_id", "Exact session id.", {"type": "string", "pattern": _ID}),
            _query("product_id", "Exact product id.", {"type": "string", "pattern": _ID}),
            _query(
                "start",
                "From (inclusive), RFC 3339 with offset.",
                {"type": "string", "format": "date-time"},
            ),
            _query(
                "end",
                "Until (exclusive), RFC 3339 with offset.",
                {"type": "string", "format": "date-time"},
            ),
            _query(
                "limit",
                "Page size.",
                {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": search_domain.MAX_LIMIT,
                    "default": search_domain.DEFAULT_LIMIT,
                },
            ),
            _query(
                "cursor",
                "next_cursor of the previous page (bound to the same filters).",
                {"type": "string"},
            ),
        ),
    ),
    ("GET", "/api/v1/analytics/tasks/{task_id}/status"): Op(
        "Status of a background task",
        ("read",),
        200,
        tasks_domain.TaskStatus,
        errors=(*READ_ERRORS, 404),
        description="queued / running / retrying / succeeded / failed / skipped, with the "
        "result or the error. 404 when unknown or expired.",
        params=(
            _path_param("task_id", "background_task_id from a 202 receipt.", {"type": "string"}),
        ),
    ),
    # Routes other modules add: response types are named "module:attr" and resolved when
    # the document is built (a free-form object when that module is absent).
    ("GET", "/api/v1/analytics/aggregations/{period}"): Op(
        "Time buckets of a period",
        ("read",),
        200,
        "analytics.application.queries:AggregationOut",
        errors=READ_ERRORS,
        description="Buckets of `period` (in `tz`) over [start, end), optionally one event type.",
        params=(
            _PERIOD,
            _query(
                "start",
                "From: RFC 3339 with offset, or YYYY-MM-DD in tz.",
                {"type": "string"},
                required=True,
            ),
            _query(
                "end", "Until (exclusive), same forms as start.", {"type": "string"}, required=True
            ),
            _query("tz", "IANA time zone of the buckets.", {"type": "string", "default": "UTC"}),
            _query(
                "event_type", "Only this event type.", {"type": "string", "pattern": _EVENT_TYPE}
            ),
        ),
    ),
    ("POST", "/api/v1/analytics/aggregations/{period}/generate"): Op(
        "(Re)compute aggregations in the background",
        ("admin",),
        202,
        "analytics.application.generate:GenerateAccepted",
        errors=(*READ_ERRORS, 422),
        description="Queues a reconcile of [start, end) widened to whole buckets; follow the "
        "returned task_id on /api/v1/analytics/tasks/{task_id}/status. Takes no body (422).",
        params=(
            _PERIOD,
            _query("start", "From.", {"type": "string"}, required=True),
            _query("end", "Until (exclusive).", {"type": "string"}, required=True),
            _query("tz", "IANA time zone.", {"type": "string", "default": "UTC"}),
        ),
    ),
    ("GET", "/api/v1/analytics/dashboard/metrics"): Op(
        "Real-time dashboard metrics",
        ("read",),
        200,
        "analytics.application.queries:DashboardOut",
        errors=READ_ERRORS,
        description="Events, unique users and sessions, revenue, conversion, top event types "
        "and products for `last` (default 1h) or [start, end); cached briefly.",
        params=(
            _query(
                "last",
                "A window ending now.",
                {"type": "string", "enum": ["15m", "1h", "24h", "7d"]},
            ),
            _query("start", "From (with end).", {"type": "string"}),
            _query("end", "Until (with start).", {"type": "string"}),
        ),
    ),
    ("GET", "/api/v1/admin/dlq"): Op(
        "List dead letters",
        ("admin",),
        200,
        "analytics.entrypoints.api.admin:DeadLetterListOut",
        errors=READ_ERRORS,
        description="Grouped by queue, actor and error type, with every letter's summary.",
        params=(
            _query("queue", "Only this queue.", {"type": "string", "enum": list(QUEUES)}),
            _query("actor", "Only this actor.", {"type": "string"}),
        ),
    ),
    ("GET", "/api/v1/admin/dlq/{letter_id}"): Op(
        "One dead letter in detail",
        ("admin",),
        200,
        "analytics.entrypoints.api.admin:DeadLetterOut",
        errors=(*READ_ERRORS, 404),
        params=(_path_param("letter_id", "Dead letter (message) id.", {"type": "string"}),),
    ),
    ("POST", "/api/v1/admin/dlq/replay"): Op(
        "Replay dead letters",
        ("admin",),
        200,
        "analytics.entrypoints.api.admin:SelectionDoneOut",
        body="analytics.entrypoints.api.admin:SelectionBody",
        errors=(*INGEST_ERRORS, 404),
        description="Requeue the selected letters (ids, or queue and/or actor, or all).",
    ),
    ("POST", "/api/v1/admin/dlq/purge"): Op(
        "Purge dead letters",
        ("admin",),
        200,
        "analytics.entrypoints.api.admin:SelectionDoneOut",
        body="analytics.entrypoints.api.admin:SelectionBody",
        errors=(*INGEST_ERRORS, 404),
        description="Delete the selected letters for good.",
    ),
    ("GET", "/metrics"): Op(
        "Prometheus metrics",
        ("operations",),
        200,
        str,
        ok_media="text/plain; version=0.0.4; charset=utf-8",
        errors=(429,),
        description="Every API process's metrics (multiprocess mode).",
    ),
    ("GET", "/health/detailed"): Op(
        "Readiness with every dependency",
        ("operations",),
        200,
        dict[str, Any],
        errors=READ_ERRORS,
        description="ok / degraded (200) or down (503, events cannot be accepted): each "
        "dependency, queue depths, worker heartbeats, system stats.",
        extra_ok={503: (dict[str, Any], "Down: events cannot be accepted right now.")},
    ),
    ("GET", "/health"): Op("Liveness", ("operations",), 200, Health, errors=(429,)),
    ("HEAD", "/health"): Op(
        "Liveness, headers only", ("operations",), 200, errors=(429,),
        description="GET /health without its body, for load balancers that probe with HEAD.",
    ),
    ("GET", "/api/v1/openapi.json"): Op(
        "This document", ("contract",), 200, dict[str, Any], errors=(429,)
    ),
    ("GET", "/docs"): Op(
        "API documentation page", ("contract",), 200, str, ok_media="text/html", errors=(429,)
    ),
    ("GET", "/docs/static/{name}"): Op(
        "Assets of the documentation page",
        ("contract",),
        200,
        str,
        ok_media="*/*",
        errors=(404, 429),
        params=(_path_param("name", "Asset file name.", {"type": "string"}),),
    ),
}


def iter_routes(app: falcon.App) -> Iterator[tuple[str, str, object]]:
    """(method, template, resource) for every responder the resource itself defines."""
    stack = list(app._router._roots)  # noqa: SLF001 - falcon has no public route listing
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.resource is None or not node.method_map:
            continue
        for method, responder in node.method_map.items():
            if getattr(responder, "__self__", None) is node.resource and method != "OPTIONS":
                yield method, node.uri_template, node.resource


def _response(type_: Any, media: str, description: str) -> dict[str, Any]:
    schema = {"type": "string"} if type_ is str else _SCHEMA_OF(type_)
    return {"description": description, "content": {media: {"schema": schema}},
            "headers": _COMMON_HEADERS}  # fmt: skip


_COMMON_HEADERS = {
    "X-Correlation-ID": {"$ref": "#/components/headers/X-Correlation-ID"},
    # On every answer to a request the rate limiter saw (README "Rate limits").
    **{name: {"$ref": f"#/components/headers/{name}"} for name in (
        "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy")},
}  # fmt: skip
#: Every GET's answer (README "HTTP caching"): revalidate with If-None-Match, get a 304.
_CACHE_HEADERS = {
    "ETag": {"description": "Strong entity tag of the body.", "schema": {"type": "string"}},
    "Cache-Control": {"description": "How long the answer may be reused.",
                      "schema": {"type": "string"}},
}  # fmt: skip
_DEPRECATION_HEADERS = {
    "Deprecation": {"description": "This route is deprecated.", "schema": {"type": "string"}},
    "Link": {"description": "The successor route (rel=successor-version).",
             "schema": {"type": "string"}},
}  # fmt: skip
_PROBLEM_REF = {"$ref": REF.format(name="Problem")}


def _resolve(type_: Any) -> Any:
    """A type, or "module:attr" imported now (a free-form object when it is not there)."""
    if not isinstance(type_, str):
        return type_
    module, _, attr = type_.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return dict[str, Any]


def _named(type_: Any) -> bool:
    return isinstance(type_, type) and (
        issubclass(type_, msgspec.Struct) or dataclasses.is_dataclass(type_)
    )


def _SCHEMA_OF(type_: Any) -> dict[str, Any]:  # noqa: N802
    type_ = _resolve(type_)
    if type_ is None:
        return {}
    if _named(type_):
        return {"$ref": REF.format(name=type_.__name__)}
    return msgspec.json.schema(type_)


def _schema_types() -> list[Any]:
    types: list[Any] = [Problem, FieldErrorOut, BucketOut]
    for op in OPERATIONS.values():
        for t in (op.ok_type, op.body, *(t for t, _ in op.extra_ok.values())):
            t = _resolve(t)
            if _named(t) and t not in types:
                types.append(t)
    return types


def build_openapi(
    app: falcon.App, *, max_batch_events: int, version: str = "0.1.0"
) -> dict[str, Any]:
    """The document for ``app``: every route of its router, with security and errors."""
    _, components = msgspec.json.schema_components(_schema_types(), ref_template=REF)
    # BatchIn keeps events raw (each one is validated on its own, for partial acceptance);
    # what a client must send is a list of EventIn.
    batch = components["BatchIn"]["properties"]["events"]
    batch.update({"items": {"$ref": REF.format(name="EventIn")}, "minItems": 1,
                  "maxItems": max_batch_events})  # fmt: skip
    # A price is a JSON number or a decimal string (msgspec decodes both exactly); its
    # schema for Decimal names the string only, which would make generated clients and
    # validators refuse ``"price": 19.99``.
    for name in ("EventIn", "LegacyEventIn"):
        price = components.get(name, {}).get("properties", {}).get("price")
        if price is not None:
            string = next(s for s in price["anyOf"] if s.get("type") == "string")
            # The rule `decimal`; (?!\n) as the identifiers' patterns: Python's $ (what
            # jsonschema and schemathesis use) would let "19.99\n" through (review).
            string["pattern"] = f"^{PRICE_TEXT.pattern}(?!\\n)$"
            number = {"type": "number", "minimum": 0, "maximum": 1_000_000_000}
            price["anyOf"] = [string, number, {"type": "null"}]
    components["Problem"]["properties"]["errors"] = {
        "type": "array", "items": {"$ref": REF.format(name="FieldErrorOut")},
        "description": "Every failing field (validation problems only).",
    }  # fmt: skip
    components["Problem"]["properties"]["parameter"] = {
        "type": "string", "description": "The query parameter at fault (bad queries only).",
    }  # fmt: skip
    components["Problem"]["properties"]["limit"] = {
        "type": "integer", "description": "The limit exceeded (413 problems).",
    }  # fmt: skip
    components["Problem"]["additionalProperties"] = True
    # Raw in the struct (encoded once, cached), BucketOut on the wire.
    components["AggregationOut"]["properties"]["buckets"]["items"] = {
        "$ref": REF.format(name="BucketOut")}  # fmt: skip
    components["TaskStatus"]["properties"]["status"]["enum"] = list(get_args(TaskState))
    paths: dict[str, dict[str, Any]] = {}
    for method, template, _resource in sorted(iter_routes(app), key=lambda r: (r[1], r[0])):
        op = OPERATIONS.get((method, template))
        paths.setdefault(template, {})[method.lower()] = _operation(method, template, op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "analytics-service",
            "version": version,
            "description": "Product-analytics events: ingest, search, metrics, aggregations. "
            "Errors are RFC 9457 problem details (application/problem+json).",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "ak_<id>_<secret>",
                    "description": "An API key: `Authorization: Bearer ak_...`.",
                },
                "apiKeyHeader": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-API-Key",
                    "description": "The same API key in `X-API-Key`.",
                },
            },
            "headers": {
                "X-Correlation-ID": {
                    "description": "The request's correlation id.",
                    "schema": {"type": "string"},
                },
                "Retry-After": {
                    "description": "Seconds to wait.",
                    "schema": {"type": "integer", "minimum": 0},
                },
                "RateLimit-Limit": {"schema": {"type": "integer"}},
                "RateLimit-Remaining": {"schema": {"type": "integer"}},
                "RateLimit-Reset": {"schema": {"type": "integer"}},
                "RateLimit-Policy": {"schema": {"type": "string"}},
            },
        },
    }


def _operation(method: str, template: str, op: Op | None) -> dict[str, Any]:
    access, _ = access_for(method, template)
    params = [_path_param(name, name, {"type": "string"}) for name in _template_params(template)]
    if op is None:
        out: dict[str, Any] = {
            "summary": f"{method} {template}",
            "x-undocumented": True,
            "parameters": params,
            "responses": {"200": {"description": "OK"}},
        }
    else:
        if op.params:
            given = {p["name"] for p in op.params}
            params = [p for p in params if p["name"] not in given] + list(op.params)
        params.append(_CORRELATION_HEADER)
        out = {
            "summary": op.summary,
            "description": op.description,
            "tags": list(op.tags),
            "operationId": _op_id(method, template),
            "parameters": params,
            "responses": {str(op.ok): _response(op.ok_type, op.ok_media, "Success")},
        }
        for status, (type_, text) in op.extra_ok.items():
            out["responses"][str(status)] = _response(type_, JSON, text)
        if op.deprecated:
            out["deprecated"] = True
        if op.body is not None:
            out["requestBody"] = {
                "required": True,
                "description": "JSON; may be sent with `Content-Encoding: gzip`.",
                "content": {JSON: {"schema": _SCHEMA_OF(op.body)}},
            }
        errors = set(op.errors)
        if access not in ("open", "metrics"):
            errors |= {401, 403, 429}
        for status in sorted(errors):
            out["responses"][str(status)] = _error(status)
        if method == "GET":
            ok = out["responses"][str(op.ok)]
            if ROUTE_KINDS.get(template) in ("private", "no-store"):  # never an ETag
                ok["headers"] = {**ok["headers"], "Cache-Control": _CACHE_HEADERS["Cache-Control"]}
            else:
                ok["headers"] = {**ok["headers"], **_CACHE_HEADERS}
                out["responses"]["304"] = {
                    "description": "Not Modified: If-None-Match names the current ETag.",
                    "headers": {**_COMMON_HEADERS, **_CACHE_HEADERS},
                }
        if op.deprecated:
            for answer in out["responses"].values():
                answer["headers"] = {**answer.get("headers", {}), **_DEPRECATION_HEADERS}
        if method == "POST" and template == "/api/v1/analytics/events/batch":
            # Either the body is not a batch ({"events": [...]}, the plain validation
            # problem), or every event was rejected: a problem whose members include the
            # batch receipt (QA: the schema named only the second, which most 422s are not).
            rejected = {"allOf": [copy.deepcopy(_PROBLEM_REF), _SCHEMA_OF(ev.BatchReceipt)]}
            out["responses"]["422"]["content"][PROBLEM] = {
                "schema": {"oneOf": [rejected, {"allOf": [copy.deepcopy(_PROBLEM_REF), {
                    "type": "object", "required": ["errors"],
                    "not": {"required": ["results"]},
                }]}]}  # fmt: skip
            }
            out["responses"]["422"]["description"] = (
                "The body is not a batch (`errors` names each failing member), or every event"
                " was rejected (the batch receipt; each one's failing fields in"
                " `results[].errors`)."
            )
    if access in ("open", "metrics"):
        out["security"] = (
            [{}, {"bearerAuth": []}, {"apiKeyHeader": []}] if access == "metrics" else []
        )
        if access == "metrics":
            note = "Needs the `read` scope when ANALYTICS_METRICS_AUTH=required."
            out["description"] = f"{out.get('description') or ''} {note}".strip()
    else:
        out["security"] = [{"bearerAuth": [access]}, {"apiKeyHeader": [access]}]
        out["x-required-scope"] = access
    return out


def _error(status: int) -> dict[str, Any]:
    resp: dict[str, Any] = {
        "description": _ERROR_TEXT.get(status, "Error"),
        "content": {PROBLEM: {"schema": copy.deepcopy(_PROBLEM_REF)}},
        "headers": dict(_COMMON_HEADERS),
    }
    if status in (429, 503):
        resp["headers"]["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
    if status == 401:
        resp["headers"]["WWW-Authenticate"] = {"schema": {"type": "string"}}
    return resp


def _template_params(template: str) -> list[str]:
    import re  # noqa: PLC0415

    return re.findall(r"\{([^}:]+)(?::[^}]*)?\}", template)


def _op_id(method: str, template: str) -> str:
    import re  # noqa: PLC0415

    words = re.sub(r"[{}]", "", template).strip("/").replace(".", "_").replace("-", "_")
    return method.lower() + "_" + "_".join(w for w in words.split("/") if w)
