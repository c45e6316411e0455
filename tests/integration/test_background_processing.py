"""Ingest -> Redis broker -> Dramatiq worker -> SQLite, with real Redis.

Shows group commit (concurrent requests share one message), idempotent storage under
redelivery and client retries, and that a SIGKILLed worker loses nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dramatiq
import msgspec
import pytest
from dramatiq import Worker

from analytics.adapters import codec
from analytics.adapters.dramatiq_queue import GroupCommitQueue, events_message
from analytics.adapters.sqlite_store import SQLiteDatabase, SQLiteEventRepository
from analytics.bootstrap import Container, bootstrap
from analytics.domain.events import Event
from analytics.entrypoints.actors import register_actors
from analytics.settings import Settings
from tests.conftest import RedisInfo
from tests.support import analytics_cmd, child_env, wait_until

NOW = datetime.now(UTC)


def make_event(i: int = 0, event_id: uuid.UUID | None = None) -> Event:
    return Event(
        event_id=event_id or uuid.uuid4(), event_type="page_view", user_id=f"u{i}",
        session_id=f"s{i}", product_id=None, metadata={"i": i}, timestamp=NOW,
        received_at=NOW, event_day=NOW.strftime("%Y-%m-%d"), event_hour=NOW.hour, price=None,
        quantity=1, currency=None, total_value=None, correlation_id=f"c{i}",
    )  # fmt: skip


@pytest.fixture
def settings(redis_server: RedisInfo, namespace: str, data_dir: Path) -> Settings:
    return Settings.from_env(
        {
            **redis_server.env(namespace),
            "ANALYTICS_DATA_DIR": str(data_dir),
            "ANALYTICS_HEARTBEAT_TIMEOUT_S": "2",
            "ANALYTICS_BROKER_MAINTENANCE_CHANCE": "1000000",
        }
    )


@pytest.fixture
def container(settings: Settings) -> Iterator[Container]:
    c = bootstrap(settings)
    register_actors(c)
    yield c
    c.broker.close()


@pytest.fixture
def worker(container: Container) -> Iterator[Worker]:
    w = Worker(container.broker, worker_threads=2, worker_timeout=100)
    w.start()
    yield w
    w.stop()


def stored(container: Container) -> int:
    return container.event_repo.count()


def test_group_commit_shares_one_message_between_concurrent_callers(container: Container) -> None:
    queue = container.task_queue
    assert isinstance(queue, GroupCommitQueue)
    ids: list[str] = []
    start = threading.Barrier(32)

    def call(i: int) -> None:
        start.wait()
        ids.append(queue.enqueue_events([make_event(i)]))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 32
    # Every caller got the id of a message that really is in Redis, and they share them.
    messages = container.broker.client.hvals(f"{container.settings.namespace}:high_priority.msgs")
    assert len(messages) == len(set(ids)) < 32
    payloads = [dramatiq.Message.decode(m) for m in messages]
    assert sum(len(codec.events_from_arg(p.args[0])) for p in payloads) == 32


def test_events_are_stored_by_the_worker(container: Container, worker: Worker) -> None:
    events = [make_event(i) for i in range(50)]
    container.task_queue.enqueue_events(events)
    wait_until(lambda: stored(container) == 50, timeout=20)


def test_redelivered_message_and_client_retry_are_stored_once(
    container: Container, worker: Worker
) -> None:
    events = [make_event(i) for i in range(10)]
    message = events_message(events)
    container.broker.enqueue(message)
    container.broker.enqueue(message)  # the broker delivers the same message again
    retry = [make_event(i, event_id=e.event_id) for i, e in enumerate(events[:5])]
    container.task_queue.enqueue_events(retry)  # the client resends half of them
    wait_until(lambda: container.broker.do_qsize("high_priority") == 0, timeout=20)
    wait_until(lambda: stored(container) >= 10, timeout=20)
    container.broker.join("high_priority", timeout=20_000)
    assert stored(container) == 10


def test_messages_of_an_older_build_and_of_this_one_are_both_stored(
    container: Container, worker: Worker
) -> None:
    """Older builds embedded the events as a JSON *string* of objects; this one as raw JSON
    rows (arrays in Event's field order). Messages of the older form still sit in queues
    (and dead letters) after an upgrade; raw JSON objects are read too."""
    old_form, new_form, objects = ([make_event(i) for i in range(k, k + 4)] for k in (0, 10, 20))
    old = events_message(old_form)
    old = old.copy(args=(codec.encode(old_form).decode(),))
    assert b'"args":["[{\\"event_id' in old.encode()  # really the escaped string form
    container.broker.enqueue(old)
    new = container.broker.enqueue(events_message(new_form))
    assert codec.encode_rows(new_form) in new.encode()  # raw JSON rows, not a string
    assert new.encode().count(b'"event_id"') == 0  # no field names in the rows
    container.broker.enqueue(
        events_message(objects).copy(args=(msgspec.Raw(codec.encode(objects)),))
    )
    wait_until(lambda: stored(container) == 12, timeout=20)
    container.broker.join("high_priority", timeout=20_000)
    sent = {e.event_id: e for e in old_form + new_form + objects}
    assert container.event_repo.get_many(sent) == sent


def test_sigkilled_worker_loses_nothing(settings: Settings, container: Container) -> None:
    """Kill a worker process while it holds a message; a new worker finishes the job."""
    env = child_env(**settings.to_env())
    db = SQLiteDatabase(settings.sqlite_path)
    # Hold the write lock so the worker is stuck inside its task when we kill it.
    blocker = db.connect()
    blocker.execute("BEGIN EXCLUSIVE")
    events = [make_event(i) for i in range(20)]
    container.task_queue.enqueue_events(events)
    w1 = subprocess.Popen(analytics_cmd("worker", "--queues", "high_priority", "--processes", "1",
                                        "--threads", "1"), env=env, stderr=subprocess.DEVNULL,
                          start_new_session=True)  # fmt: skip
    try:
        acked = f"{settings.namespace}:__acks__.*"
        wait_until(lambda: any(container.broker.client.scan_iter(match=acked)), timeout=30,
                   message="worker never took the message")  # fmt: skip
        os.killpg(w1.pid, signal.SIGKILL)  # the master and its worker processes, no goodbye
        w1.wait(10)
    finally:
        if w1.poll() is None:
            os.killpg(w1.pid, signal.SIGKILL)
    blocker.execute("ROLLBACK")
    repo = SQLiteEventRepository(db)
    assert repo.count() == 0  # nothing was written before the kill...
    w2 = subprocess.Popen(analytics_cmd("worker", "--queues", "high_priority", "--processes", "1",
                                        "--threads", "2"), env=env, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        # ...and after the heartbeat timeout the message is redelivered and stored once.
        wait_until(lambda: repo.count() == 20, timeout=60, message="message not redelivered")
    finally:
        w2.send_signal(signal.SIGTERM)
        w2.wait(30)
    assert set(repo.get_many(e.event_id for e in events)) == {e.event_id for e in events}
