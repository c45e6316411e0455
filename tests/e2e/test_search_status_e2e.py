"""The running service: an event posted over HTTP is followed by its background_task_id
to ``succeeded``, then found by search with a cursor that pages to the end."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import RedisInfo
from tests.support import analytics_cmd, child_env, free_port, wait_http, wait_until


def http(method: str, url: str, body: object | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,  # noqa: S310 - loopback
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


@pytest.fixture(scope="module")
def service(redis_server: RedisInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    namespace = f"t-{uuid.uuid4().hex[:12]}"
    data_dir = tmp_path_factory.mktemp("search-status") / "data"
    port = free_port()
    log = data_dir.parent / "serve.log"
    env = child_env(**redis_server.env(namespace), ANALYTICS_WEB_WORKERS="1",
                    ANALYTICS_WORKER_PROCESSES="1", ANALYTICS_WORKER_THREADS="2",
                    ANALYTICS_AUTH="disabled")  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            analytics_cmd("serve", "--data-dir", str(data_dir), "--port", str(port)),
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=60, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
        client = redis_server.client()
        keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
        if keys:
            client.delete(*keys)


def test_follow_background_task_then_search(service: str) -> None:
    user = f"e2e-{uuid.uuid4().hex[:8]}"
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    sent = []
    for i in range(5):
        status, body = http("POST", f"{service}/api/v1/analytics/events", {
            "event_type": "purchase", "user_id": user, "session_id": "s1", "product_id": "p1",
            "price": "19.99", "quantity": 2, "currency": "EUR",
            "timestamp": (base + timedelta(seconds=i)).isoformat()})  # fmt: skip
        assert status == 202, body
        sent.append(body)
    task_url = f"{service}/api/v1/analytics/tasks/{sent[-1]['background_task_id']}/status"

    def done() -> bool:
        return http("GET", task_url)[1]["status"] == "succeeded"

    wait_until(done, timeout=30, message=f"task never succeeded: {http('GET', task_url)}")
    _, task = http("GET", task_url)
    assert task["actor"] == "process_events" and task["result"]["stored"] >= 1
    assert task["attempts"] == 1 and task["enqueued_at"] and task["finished_at"]

    # Every event is stored once its task succeeded; page through them two at a time.
    for receipt in sent:
        tid = receipt["background_task_id"]
        wait_until(lambda t=tid: http("GET", f"{service}/api/v1/analytics/tasks/{t}/status")[1]
                   ["status"] == "succeeded", timeout=30)  # fmt: skip
    query = {"user_id": user, "event_type": "purchase", "limit": "2"}
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        qs = urllib.parse.urlencode({**query, **({"cursor": cursor} if cursor else {})})
        status, page = http("GET", f"{service}/api/v1/analytics/events/search?{qs}")
        assert status == 200, page
        found += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [f["event_id"] for f in found] == [r["event_id"] for r in sent]
    assert all(f["total_value"] == "39.98" for f in found)

    status, problem = http("GET", f"{service}/api/v1/analytics/events/search?limit=5000")
    assert status == 400 and problem["parameter"] == "limit"
    status, problem = http("GET", f"{service}/api/v1/analytics/tasks/{uuid.uuid4()}/status")
    assert status == 404 and problem["status"] == 404
