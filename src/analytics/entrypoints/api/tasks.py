"""``GET /api/v1/analytics/tasks/{task_id}/status``: one status record, or 404."""

from __future__ import annotations

import falcon
import msgspec

from analytics.application.queries import check_params
from analytics.application.task_status import get_task_status
from analytics.domain.ports import TaskStatusStore

_encode = msgspec.json.Encoder().encode


class TaskStatusResource:
    def __init__(self, store: TaskStatusStore) -> None:
        self.store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response, task_id: str) -> None:
        check_params(req.params, ())  # like search and aggregations: no silent no-op
        status = get_task_status(task_id, store=self.store)
        resp.content_type = "application/json"
        resp.cache_control = ["no-store"]
        resp.data = _encode(status)
