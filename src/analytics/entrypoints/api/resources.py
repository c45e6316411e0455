"""Thin resources: decode, call a use case, encode."""

from __future__ import annotations

import falcon
import msgspec

from analytics.application.ingest import IngestDeps, accept_batch, accept_event
from analytics.entrypoints.api.body import read_json_body
from analytics.entrypoints.api.problems import Problem
from analytics.entrypoints.api.security import spend

encode = msgspec.json.Encoder().encode
JSON = "application/json"
NEW_ROUTE = "/api/v1/analytics/events"
#: WSGI environ key: the error the ingest lane's validation of this very body raised
#: (``IngestLane`` hands the request over to be answered, not decoded a second time).
LANE_REJECTION = "analytics.lane_rejection"


class EventsResource:
    def __init__(self, deps: IngestDeps, max_body_bytes: int) -> None:
        self.deps = deps
        self.max_body_bytes = max_body_bytes

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        # A single event is never larger inflated than plain: the body's own limit caps
        # what a gzip body may inflate to (8 KB of gzip made 8 MB to decode: security QA).
        raw = read_json_body(req, self.max_body_bytes, max_decompressed=self.max_body_bytes)
        rejection = req.env.get(LANE_REJECTION)
        if rejection is not None:
            raise rejection
        receipt = accept_event(raw, correlation_id=req.context.correlation_id, deps=self.deps)
        resp.status = falcon.HTTP_202
        resp.content_type = JSON
        resp.data = encode(receipt)


class BatchResource:
    def __init__(self, deps: IngestDeps, max_body_bytes: int, max_events: int) -> None:
        self.deps = deps
        self.max_body_bytes = max_body_bytes
        self.max_events = max_events

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        raw = read_json_body(req, self.max_body_bytes)
        receipt = accept_batch(
            raw,
            correlation_id=req.context.correlation_id,
            deps=self.deps,
            max_events=self.max_events,
            admit=lambda n: spend(req, resp, n - 1, total=n),  # the request already cost 1
        )
        req.context.batch_receipt = receipt  # for the business metrics
        if not (receipt.accepted or receipt.duplicates):
            # Nothing queued: an error, so problem+json like every other, and the receipt's
            # members beside its own, each event's failing fields in ``results``.
            raise Problem(
                422, slug="batch-rejected", title="Every event was rejected",
                detail=f"{receipt.rejected} event(s), none valid; see each result's errors",
                **msgspec.structs.asdict(receipt),
            )  # fmt: skip
        resp.status = falcon.HTTP_202
        resp.content_type = JSON
        resp.data = encode(receipt)


class LegacyEventsResource:
    """The seed's old route: looser rules, marked deprecated (RFC 9745 / RFC 8594)."""

    def __init__(self, deps: IngestDeps, max_body_bytes: int) -> None:
        self.deps = deps
        self.max_body_bytes = max_body_bytes

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        # Deprecation and Link: SecurityHeadersMiddleware, on every answer of this route.
        raw = read_json_body(req, self.max_body_bytes, max_decompressed=self.max_body_bytes)
        receipt = accept_event(
            raw, correlation_id=req.context.correlation_id, deps=self.deps, legacy=True
        )
        resp.status = falcon.HTTP_202
        resp.content_type = JSON
        resp.data = encode(receipt)


class HealthResource:
    """Liveness only: answers without touching any dependency."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = JSON
        resp.data = b'{"status":"ok"}'

    on_head = on_get  # load balancers probe with HEAD; Falcon sends the headers only
