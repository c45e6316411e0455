"""Use case: the status record of a background task (a Dramatiq message id)."""

from __future__ import annotations

import re

from analytics.domain.errors import NotFound
from analytics.domain.ports import TaskStatusStore
from analytics.domain.tasks import TaskStatus

_TASK_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")


def get_task_status(task_id: str, *, store: TaskStatusStore) -> TaskStatus:
    """The record, or NotFound for an id that is unknown, expired or not an id at all."""
    status = store.get(task_id) if _TASK_ID.match(task_id) else None
    if status is None:
        raise NotFound(f"no task {task_id!r} (unknown, or its status record expired)")
    return status
