"""The running service: an event posted over HTTP is followed by its background_task_id
to ``succeeded``, then found by search with a cursor that pages to the end."""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import RedisInfo
from tests.support import ServeProcess, child_env, http_json, wait_until


@pytest.fixture(scope="module")
def service(
    redis_server: RedisInfo, module_namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("search-status") / "data"
    env = child_env(**redis_server.env(module_namespace), ANALYTICS_WEB_WORKERS="1",
                    ANALYTICS_WORKER_PROCESSES="1", ANALYTICS_WORKER_THREADS="2",
                    ANALYTICS_AUTH="disabled")  # fmt: skip
    with ServeProcess(data_dir, env, log=data_dir.parent / "serve.log") as serve:
        yield serve.url


def test_follow_background_task_then_search(service: str) -> None:
    user = f"e2e-{uuid.uuid4().hex[:8]}"
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    sent = []
    for i in range(5):
        status, _, body = http_json("POST", f"{service}/api/v1/analytics/events", {
            "event_type": "purchase", "user_id": user, "session_id": "s1", "product_id": "p1",
            "price": "19.99", "quantity": 2, "currency": "EUR",
            "timestamp": (base + timedelta(seconds=i)).isoformat()})  # fmt: skip
        assert status == 202, body
        sent.append(body)
    task_url = f"{service}/api/v1/analytics/tasks/{sent[-1]['background_task_id']}/status"

    def done() -> bool:
        return http_json("GET", task_url).body["status"] == "succeeded"

    wait_until(done, timeout=30, message=f"task never succeeded: {http_json('GET', task_url).body}")
    task = http_json("GET", task_url).body
    assert task["actor"] == "process_events" and task["result"]["stored"] >= 1
    assert task["attempts"] == 1 and task["enqueued_at"] and task["finished_at"]

    # Every event is stored once its task succeeded; page through them two at a time.
    for receipt in sent:
        tid = receipt["background_task_id"]
        wait_until(lambda t=tid: http_json("GET", f"{service}/api/v1/analytics/tasks/{t}/status")
                   .body["status"] == "succeeded", timeout=30)  # fmt: skip
    query = {"user_id": user, "event_type": "purchase", "limit": "2"}
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        qs = urllib.parse.urlencode({**query, **({"cursor": cursor} if cursor else {})})
        status, _, page = http_json("GET", f"{service}/api/v1/analytics/events/search?{qs}")
        assert status == 200, page
        found += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [f["event_id"] for f in found] == [r["event_id"] for r in sent]
    assert all(f["total_value"] == "39.98" for f in found)

    status, _, problem = http_json("GET", f"{service}/api/v1/analytics/events/search?limit=5000")
    assert status == 400 and problem["parameter"] == "limit"
    status, _, problem = http_json("GET", f"{service}/api/v1/analytics/tasks/{uuid.uuid4()}/status")
    assert status == 404 and problem["status"] == 404
