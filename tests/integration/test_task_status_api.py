"""GET /api/v1/analytics/tasks/{task_id}/status over the real app, real Redis, a real worker.

One container and one in-process Dramatiq worker per module (fast); the worker consumes
every queue but ``parked``, where a message stays ``queued`` for as long as we look.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import falcon.testing
import pytest
import redis
from dramatiq import Worker

from analytics.adapters.dramatiq_queue import QUEUES
from analytics.adapters.redis_task_status import RedisTaskStatusStore
from analytics.bootstrap import Container, bootstrap
from analytics.domain import tasks
from analytics.domain.clock import SystemClock
from analytics.entrypoints.actors import register_actors
from analytics.entrypoints.api.app import create_app
from analytics.settings import Settings
from tests.conftest import RedisInfo
from tests.support import free_port, wait_until

TTL_S = 3600


class Env:
    def __init__(self, container: Container, client: falcon.testing.TestClient) -> None:
        self.container = container
        self.client = client
        self.gate = threading.Event()
        self.actors: dict[str, dramatiq.Actor[Any, Any]] = {}

    def status(self, task_id: str) -> dict[str, Any]:
        r = self.client.simulate_get(f"/api/v1/analytics/tasks/{task_id}/status")
        assert r.status_code == 200, r.text
        return r.json  # type: ignore[no-any-return]

    def wait_status(self, task_id: str, *wanted: str) -> dict[str, Any]:
        wait_until(lambda: self.status(task_id)["status"] in wanted, timeout=20,
                   message=f"{task_id} never reached {wanted}")  # fmt: skip
        return self.status(task_id)


@pytest.fixture(scope="module")
def env(redis_server: RedisInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    namespace = f"t-{uuid.uuid4().hex[:12]}"
    data_dir: Path = tmp_path_factory.mktemp("status") / "data"
    settings = Settings.from_env(
        {
            **redis_server.env(namespace),
            "ANALYTICS_DATA_DIR": str(data_dir),
            "ANALYTICS_TASK_STATUS_TTL_S": str(TTL_S),
            "ANALYTICS_AUTH": "disabled",  # auth is not the subject (see test_auth_matrix)
        }
    )
    container = bootstrap(settings)
    register_actors(container)
    e = Env(container, falcon.testing.TestClient(create_app(container)))
    broker = container.broker
    broker.declare_queue("parked")

    def ok(n: int) -> dict[str, int]:
        return {"n": n}

    def blocking() -> str:
        e.gate.wait(20)
        return "released"

    def broken() -> None:
        raise RuntimeError("the disk is on fire")

    def flaky() -> None:
        raise ConnectionError("try again later")

    e.actors = {
        "ok": dramatiq.actor(ok, broker=broker, queue_name="aggregations"),
        "parked": dramatiq.actor(ok, actor_name="parked_ok", broker=broker, queue_name="parked"),
        "blocking": dramatiq.actor(blocking, broker=broker, queue_name="maintenance"),
        "broken": dramatiq.actor(broken, broker=broker, queue_name="maintenance", max_retries=0),
        # One retry, ten minutes away: the record shows ``retrying`` until the module ends.
        "flaky": dramatiq.actor(flaky, broker=broker, queue_name="maintenance", max_retries=1,
                                min_backoff=600_000, max_backoff=600_000),
    }  # fmt: skip
    worker = Worker(broker, queues=set(QUEUES), worker_threads=4, worker_timeout=100)
    worker.start()
    try:
        yield e
    finally:
        e.gate.set()
        worker.stop()
        broker.close()
        client = redis_server.client()
        keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
        if keys:
            client.delete(*keys)


def test_unknown_task_is_404_problem(env: Env) -> None:
    r = env.client.simulate_get(f"/api/v1/analytics/tasks/{uuid.uuid4()}/status")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json["status"] == 404 and "correlation_id" in r.json


def test_an_unknown_parameter_is_400_naming_it(env: Env) -> None:
    r = env.client.simulate_get(f"/api/v1/analytics/tasks/{uuid.uuid4()}/status",
                                params={"verbose": "1"})  # fmt: skip
    assert r.status_code == 400 and r.json["parameter"] == "verbose", r.json
    assert "takes none" in r.json["detail"]


def test_queued_until_a_worker_takes_it(env: Env) -> None:
    message = env.actors["parked"].send(1)
    s = env.status(message.message_id)
    assert s["status"] == "queued" and s["attempts"] == 0
    assert s["actor"] == "parked_ok" and s["queue"] == "parked" and s["enqueued_at"]
    assert s["started_at"] is None and s["finished_at"] is None and s["result"] is None


def test_record_lives_in_the_namespace_with_the_ttl(env: Env, redis_server: RedisInfo) -> None:
    message = env.actors["parked"].send(2)
    key = f"{env.container.settings.namespace}:task:{message.message_id}"
    ttl_ms = redis_server.client().pttl(key)
    assert 0 < ttl_ms <= TTL_S * 1000


def test_running_then_succeeded_with_a_result(env: Env) -> None:
    env.gate.clear()
    message = env.actors["blocking"].send()
    s = env.wait_status(message.message_id, "running")
    assert s["attempts"] == 1 and s["started_at"] and s["finished_at"] is None
    env.gate.set()
    s = env.wait_status(message.message_id, "succeeded")
    assert s["result"] == "released" and s["error"] is None
    assert s["enqueued_at"] <= s["started_at"] <= s["finished_at"]


def test_succeeded_with_result_summary(env: Env) -> None:
    message = env.actors["ok"].send(42)
    s = env.wait_status(message.message_id, "succeeded")
    assert s["result"] == {"n": 42} and s["queue"] == "aggregations" and s["attempts"] == 1


def test_failing_actor_ends_failed_with_the_error(env: Env) -> None:
    message = env.actors["broken"].send()
    s = env.wait_status(message.message_id, "failed")
    assert s["error"] == "RuntimeError: the disk is on fire"
    assert s["attempts"] == 1 and s["finished_at"] and s["result"] is None


def test_a_retried_failure_shows_retrying_with_the_attempt_count(env: Env) -> None:
    message = env.actors["flaky"].send()
    s = env.wait_status(message.message_id, "retrying")
    assert s["attempts"] == 1 and s["error"] == "ConnectionError: try again later"
    assert s["finished_at"] is None


def test_ingest_background_task_id_is_followed_to_succeeded(env: Env) -> None:
    event_id = str(uuid.uuid4())
    r = env.client.simulate_post(
        "/api/v1/analytics/events",
        json={"event_type": "page_view", "user_id": "u1", "session_id": "s1", "event_id": event_id},
    )
    assert r.status_code == 202, r.text
    task_id = r.json["background_task_id"]
    first = env.status(task_id)  # recorded by after_enqueue in this (the API) process
    assert first["status"] in {"queued", "running", "succeeded"}
    assert first["actor"] == "process_events" and first["queue"] == "high_priority"
    s = env.wait_status(task_id, "succeeded")
    assert s["result"] == {"stored": 1, "duplicates": 0}
    search = env.client.simulate_get("/api/v1/analytics/events/search",
                                     query_string="user_id=u1&limit=1000")  # fmt: skip
    assert event_id in [item["event_id"] for item in search.json["items"]]


def test_redis_store_is_monotonic_across_racing_hooks(
    redis_server: RedisInfo, namespace: str
) -> None:
    store = RedisTaskStatusStore(redis_server.client(), namespace=namespace, ttl_s=60)
    now = SystemClock().now()
    store.apply(tasks.running("m1", actor="a", queue="q", at=now, retries=0, enqueued_at=now))
    store.apply(tasks.queued("m1", actor="a", queue="q", at=now, retries=0))  # late
    s = store.get("m1")
    assert s is not None and s.status == "running" and s.enqueued_at == now
    store.apply(tasks.succeeded("m1", at=now, attempts=1, result={"ok": True}))
    store.apply(tasks.running("m1", actor="a", queue="q", at=now, retries=0, enqueued_at=now))
    s = store.get("m1")
    assert s is not None and (s.status, s.result, s.finished_at) == ("succeeded", {"ok": True}, now)
    assert store.get("m2") is None


def test_status_store_unreachable_is_503_not_500(tmp_path: Path) -> None:
    settings = Settings(broker="stub", storage="memory", data_dir=tmp_path, auth="disabled")
    dead = RedisTaskStatusStore(
        redis.Redis(port=free_port(), socket_connect_timeout=0.5), namespace="x", ttl_s=60
    )
    client = falcon.testing.TestClient(create_app(bootstrap(settings, task_status=dead)))
    r = client.simulate_get("/api/v1/analytics/tasks/abc/status")
    assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
