"""Thin resources for the query side: aggregations, their background generation, dashboard."""

from __future__ import annotations

import falcon
import msgspec

from analytics.application.closed_documents import aggregation_document, is_closed, parse_query
from analytics.application.generate import request_generation
from analytics.application.queries import (
    QueryDeps,
    parse_dashboard_query,
    query_dashboard,
)
from analytics.domain.errors import FieldError, ValidationFailed
from analytics.domain.ports import AggregationJobs
from analytics.entrypoints.api.http_cache import mark, strong_etag

encode = msgspec.json.Encoder().encode
JSON = "application/json"


class AggregationsResource:
    """GET /api/v1/analytics/aggregations/{period}"""

    def __init__(self, deps: QueryDeps) -> None:
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response, period: str) -> None:
        q = parse_query(period, req.params, max_buckets=self.deps.limits.max_buckets)
        mark(req, "closed" if is_closed(q, self.deps) else "open")  # HTTP caching
        resp.content_type = JSON
        resp.data = aggregation_document(q, deps=self.deps)  # in-process level when closed


class GenerateAggregationsResource:
    """POST /api/v1/analytics/aggregations/{period}/generate?start=..&end=..[&tz=..]"""

    def __init__(self, jobs: AggregationJobs, max_buckets: int) -> None:
        self.jobs = jobs
        self.max_buckets = max_buckets

    def on_post(self, req: falcon.Request, resp: falcon.Response, period: str) -> None:
        if req.bounded_stream.read(4096).strip():  # a range sent as JSON was ignored (QA)
            raise ValidationFailed([FieldError(
                "$", "no_body", "generate takes no body: give the range as query parameters,"
                " ?start=...&end=...[&tz=...]",
            )])  # fmt: skip
        accepted = request_generation(
            period, req.params, jobs=self.jobs, max_buckets=self.max_buckets
        )
        resp.status = falcon.HTTP_202
        resp.content_type = JSON
        resp.data = encode(accepted)


class DashboardResource:
    """GET /api/v1/analytics/dashboard/metrics?last=1h | start=..&end=.."""

    def __init__(self, deps: QueryDeps) -> None:
        self.deps = deps
        # ETags of the bodies served last: a warm answer is the very bytes object the
        # in-process cache level holds, so its hash need not be computed again.
        self._etags: dict[int, tuple[bytes, str]] = {}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        q = parse_dashboard_query(
            req.params,
            now=self.deps.clock.now(),
            max_window=self.deps.limits.dashboard_max_window,
        )
        resp.content_type = JSON
        resp.cache_control = ["private", f"max-age={self.deps.limits.ttl_dashboard_s}"]
        body = query_dashboard(q, deps=self.deps)
        known = self._etags.get(id(body))
        if known is not None and known[0] is body:  # same object (it is kept alive here)
            etag = known[1]
        else:
            etag = strong_etag(body)
            if len(self._etags) >= 64:
                self._etags.clear()
            self._etags[id(body)] = (body, etag)
        resp.set_header("ETag", etag)  # what the HTTP cache middleware would compute
        resp.data = body
