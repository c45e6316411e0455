"""``GET /api/v1/analytics/events/search`` and ``GET /api/v1/analytics/events/{event_id}``:
decode the request, call the use case."""

from __future__ import annotations

import falcon
import msgspec

from analytics.application.queries import check_params
from analytics.application.search_events import find_event, search_events
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


class EventResource:
    """One stored event by its id (the same shape as a search item)."""

    def __init__(self, repo: EventRepository) -> None:
        self.repo = repo

    def on_get(self, req: falcon.Request, resp: falcon.Response, event_id: str) -> None:
        check_params(req.params, ())
        resp.content_type = "application/json"
        resp.data = _encode(find_event(event_id, repo=self.repo))
