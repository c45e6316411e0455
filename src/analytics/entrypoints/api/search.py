"""``GET /api/v1/analytics/events/search``: decode the query string, call the use case."""

from __future__ import annotations

import falcon
import msgspec

from analytics.application.search_events import search_events
from analytics.domain.ports import EventRepository

_encode = msgspec.json.Encoder().encode


class SearchResource:
    def __init__(self, repo: EventRepository, secret: bytes) -> None:
        self.repo = repo
        self.secret = secret

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        params = {k: v if isinstance(v, list) else [v] for k, v in req.params.items()}
        page = search_events(params, repo=self.repo, secret=self.secret)
        resp.content_type = "application/json"
        resp.data = _encode(page)
