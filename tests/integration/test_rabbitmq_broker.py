"""RabbitMQ as the broker: publisher confirms on, group commit, declared queues, a worker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from dramatiq import Worker
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from analytics.adapters.dramatiq_queue import QUEUES, GroupCommitQueue
from analytics.adapters.memory import InMemoryEventRepository, InMemoryNotifier
from analytics.bootstrap import Container, bootstrap
from analytics.entrypoints.actors import register_actors
from analytics.settings import Settings
from tests.aws_support import make_event
from tests.support import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def container(rabbitmq_url: str, redis_server: Any, namespace: str) -> Iterator[Container]:
    # Task-status records go to Redis: the test's own, under its own prefix (with the
    # defaults they went to 127.0.0.1:6379 under "analytics", another deployment's there).
    settings = Settings(broker="rabbitmq", storage="memory", rabbitmq_url=rabbitmq_url,
                        sns_notify_event_types="purchase", redis_host=redis_server.host,
                        redis_port=redis_server.port, redis_db=redis_server.db,
                        namespace=namespace)  # fmt: skip
    c = bootstrap(settings, event_repo=InMemoryEventRepository(), notifier=InMemoryNotifier())
    register_actors(c)
    yield c
    c.broker.close()


def test_settings_choose_rabbitmq_with_delivery_confirmation(container: Container) -> None:
    broker = container.broker
    assert isinstance(broker, RabbitmqBroker)
    assert broker.confirm_delivery is True
    assert set(QUEUES) <= broker.get_declared_queues()


def test_reads_after_the_connection_was_closed_take_a_new_one(container: Container) -> None:
    """dramatiq replaces a thread's dead connection only in enqueue: queue depths (the
    overload check, /metrics, /health/detailed) failed until the thread enqueued (QA)."""
    broker = container.broker
    before = broker.get_queue_message_counts("high_priority")
    broker.channel.close()  # as RabbitMQ closing the channel
    assert broker.get_queue_message_counts("high_priority") == before
    broker.connection.close()  # as RabbitMQ closing the connection
    assert broker.get_queue_message_counts("high_priority") == before
    broker.connection.close()
    assert broker.live_connection().is_open
    broker.connection.close()
    broker.ping()  # what /health/detailed does: a round trip, on a new connection


def test_group_commit_over_rabbitmq_stores_every_event_once(container: Container) -> None:
    queue = container.task_queue
    assert isinstance(queue, GroupCommitQueue)
    events = [make_event(n, event_type="purchase" if n % 10 == 0 else "page_view",
                         product_id="sku") for n in range(200)]  # fmt: skip
    task_ids: list[str] = []

    def send(chunk: list[Any]) -> None:
        task_ids.append(queue.enqueue_events(chunk))

    threads = [threading.Thread(target=send, args=(events[i : i + 10],))
               for i in range(0, 200, 10)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(task_ids) == 20  # every caller got a task id once its group was confirmed
    queue.enqueue_events(events[:50])  # a client retry: stored once
    worker = Worker(container.broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        repo = container.event_repo
        notifier = container.notifier
        assert isinstance(notifier, InMemoryNotifier)
        purchases = {e.event_id for e in events if e.event_type == "purchase"}
        wait_until(
            lambda: repo.count() == 200 and {e.event_id for e in notifier.published} == purchases,
            timeout=30,
            message="not every event stored and every purchase announced",
        )
    finally:
        worker.stop()
    assert repo.get_many(e.event_id for e in events) == {e.event_id: e for e in events}
    # Notifications are at least once: the client's retry, processed while the original
    # group was still being stored, may announce a purchase again (README, "SNS").
    assert {e.event_id for e in notifier.published} == purchases


def test_beside_rabbitmq_workers_report_to_the_redis_the_scheduler_reads(
    rabbitmq_url: str, redis_server: Any, namespace: str
) -> None:
    """With RabbitMQ as the broker and REDIS_HOST set (the scheduler's lease needs it),
    a worker records its actors (else the scheduler skips every job: "no worker declares
    this actor") and its heartbeats (else ``analytics check worker`` and
    ``/health/detailed`` never see a live worker)."""
    from analytics.adapters.redis_probe import RedisProbe  # noqa: PLC0415
    from analytics.adapters.worker_registry import ActorRegistry, actors_key  # noqa: PLC0415
    from analytics.bootstrap import ops_redis_client  # noqa: PLC0415
    from analytics.entrypoints.health_check import check_worker  # noqa: PLC0415
    from analytics.entrypoints.telemetry import install  # noqa: PLC0415

    settings = Settings.from_env({
        **redis_server.env(namespace), "ANALYTICS_BROKER": "rabbitmq",
        "RABBITMQ_URL": rabbitmq_url, "ANALYTICS_STORAGE": "memory",
        "ANALYTICS_WORKER_HEARTBEAT_INTERVAL_S": "0.2",
    })  # fmt: skip
    assert settings.ops_redis
    c = bootstrap(settings, event_repo=InMemoryEventRepository())
    install(c.broker, settings, worker=True)
    c.broker.add_middleware(ActorRegistry(ops_redis_client(settings, c.broker), namespace))
    register_actors(c)
    probe = RedisProbe.from_kwargs(settings.redis_kwargs(), namespace)
    worker = Worker(c.broker, queues={"high_priority"}, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        wait_until(
            lambda: probe.heartbeats(["high_priority"])["high_priority"] is not None,
            timeout=10, message="no heartbeat for high_priority",
        )  # fmt: skip
        assert "fresh" in check_worker(probe, ["high_priority"], max_age_s=30)
        assert probe.client.sismember(actors_key(namespace), "process_events")
    finally:
        worker.stop()
        c.broker.close()


def test_without_a_redis_beside_rabbitmq_nothing_is_reported(
    rabbitmq_url: str, namespace: str
) -> None:
    from analytics.bootstrap import ops_redis_client  # noqa: PLC0415

    settings = Settings(broker="rabbitmq", storage="memory", rabbitmq_url=rabbitmq_url,
                        namespace=namespace)  # never the default prefix on a shared Redis  # fmt: skip
    assert not settings.ops_redis
    c = bootstrap(settings, event_repo=InMemoryEventRepository())
    try:
        assert ops_redis_client(settings, c.broker) is None  # nobody would read it
    finally:
        c.broker.close()


def test_overload_protection_reads_the_rabbitmq_queue(
    rabbitmq_url: str, redis_server: Any, namespace: str
) -> None:
    """Ingest answers 503 with Retry-After once high_priority holds more ready messages
    than ANALYTICS_OVERLOAD_QUEUE_DEPTH, on RabbitMQ as on Redis; workers count what they
    drain in the Redis beside it."""
    import falcon.testing  # noqa: PLC0415

    from analytics.adapters.backlog import DrainCounter, RabbitBacklog  # noqa: PLC0415
    from analytics.entrypoints.api.app import create_app  # noqa: PLC0415

    settings = Settings.from_env({
        **redis_server.env(namespace), "ANALYTICS_BROKER": "rabbitmq", "ANALYTICS_AUTH": "disabled",
        "RABBITMQ_URL": rabbitmq_url, "ANALYTICS_STORAGE": "memory",
        "ANALYTICS_OVERLOAD_QUEUE_DEPTH": "3", "ANALYTICS_RATE_LIMIT": "disabled",
    })  # fmt: skip
    c = bootstrap(settings, event_repo=InMemoryEventRepository())
    try:
        assert isinstance(c.backlog, RabbitBacklog)
        assert any(isinstance(m, DrainCounter) for m in c.broker.middleware)
        c.broker.flush("high_priority")  # what earlier tests of this vhost left
        client = falcon.testing.TestClient(create_app(c))
        url = "/api/v1/analytics/events"
        for n in range(4):  # no worker: each is one message, ready in the queue
            event = {"event_type": "page_view", "user_id": f"u{n}", "session_id": "s1"}
            assert client.simulate_post(url, json=event).status_code == 202
        wait_until(lambda: c.backlog.depth() >= 4, timeout=5, message="depth not seen")  # type: ignore[union-attr]
        r = client.simulate_post(url, json={"event_type": "page_view", "user_id": "u9"})
        assert r.status_code == 503, r.text
        assert int(r.headers["Retry-After"]) >= 1
        assert r.headers["Content-Type"] == "application/problem+json"
    finally:
        c.broker.flush("high_priority")
        c.broker.close()


def test_beside_rabbitmq_worker_boots_are_counted_in_the_ops_redis(
    rabbitmq_url: str, redis_server: Any, namespace: str, tmp_path: Any
) -> None:
    """``analytics worker`` on RabbitMQ with REDIS_HOST set: its boots and recycles went
    uncounted (the recycler was given the broker's client, None on RabbitMQ), though the
    README says they are in ``<ns>:ops:workers`` (QA)."""
    from tests.support import AnalyticsProcess, child_env  # noqa: PLC0415

    env = child_env(
        **redis_server.env(namespace), ANALYTICS_BROKER="rabbitmq", RABBITMQ_URL=rabbitmq_url,
        ANALYTICS_STORAGE="memory", ANALYTICS_DATA_DIR=str(tmp_path),
        ANALYTICS_WORKER_METRICS_PORT="0",
    )  # fmt: skip
    client = redis_server.client()
    with AnalyticsProcess("worker", "--queues", "high_priority", "--processes", "1",
                          "--threads", "1", env=env, log=tmp_path / "worker.log"):  # fmt: skip
        wait_until(lambda: client.hget(f"{namespace}:ops:workers", "boots") is not None,
                   timeout=60, message="the worker's boot was not counted")  # fmt: skip
    assert int(client.hget(f"{namespace}:ops:workers", "boots")) >= 1


def _close_connections_of(vhost: str) -> int:
    """Close every connection to ``vhost`` from the broker's side, as an outage does."""
    import shutil  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    from tests.conftest import _rabbitmqctl  # noqa: PLC0415

    listed = subprocess.run(  # noqa: S603
        [shutil.which("rabbitmqctl") or "rabbitmqctl", "-q", "list_connections", "pid", "vhost"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    pids = [line.split("\t")[0] for line in listed.splitlines() if line.endswith("\t" + vhost)]
    for pid in pids:
        _rabbitmqctl("close_connection", pid, "test: an outage")
    return len(pids)


def test_health_is_down_while_rabbitmq_has_closed_the_connection_and_refuses_new_ones(
    rabbitmq_url: str, redis_server: Any, namespace: str
) -> None:
    """pika's ``is_open`` stays true for a connection RabbitMQ closed until it reads from
    it: /health/detailed answered ``ok`` through a whole outage while ingest said 503 (QA)."""
    from falcon import testing  # noqa: PLC0415

    from analytics.entrypoints.api.app import create_app  # noqa: PLC0415
    from tests.conftest import _rabbitmqctl  # noqa: PLC0415

    vhost = rabbitmq_url.rsplit("/", 1)[1]
    settings = Settings(broker="rabbitmq", storage="memory", rabbitmq_url=rabbitmq_url,
                        auth="disabled", redis_host=redis_server.host, redis_port=redis_server.port,
                        redis_db=redis_server.db, namespace=namespace)  # fmt: skip
    container = bootstrap(settings, event_repo=InMemoryEventRepository())
    client = testing.TestClient(create_app(container))
    assert client.simulate_get("/health/detailed").json["checks"]["broker"]["status"] == "ok"
    assert _rabbitmqctl("set_vhost_limits", "-p", vhost, '{"max-connections": 0}')
    try:
        assert _close_connections_of(vhost) >= 1
        down = client.simulate_get("/health/detailed")
        assert down.status_code == 503, down.json
        assert down.json["checks"]["broker"]["status"] == "down"
        letters = client.simulate_get("/api/v1/admin/dlq")  # was a 500 (pika's error)
        assert letters.status_code == 503 and letters.headers["Retry-After"], letters.text
    finally:
        _rabbitmqctl("clear_vhost_limits", "-p", vhost)
    wait_until(
        lambda: client.simulate_get("/health/detailed").json["checks"]["broker"]["status"] == "ok",
        timeout=30, message="the broker check did not recover",
    )  # fmt: skip
    container.broker.close()
