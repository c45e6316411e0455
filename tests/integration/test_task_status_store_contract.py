"""One contract for every TaskStatusStore: the in-memory fake and Redis (Lua script)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics.adapters.memory import InMemoryTaskStatusStore
from analytics.adapters.redis_task_status import RedisTaskStatusStore
from analytics.domain import tasks
from analytics.domain.ports import TaskStatusStore
from tests.conftest import RedisInfo

T = datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[TaskStatusStore]:
    if request.param == "memory":
        yield InMemoryTaskStatusStore()
        return
    redis_server: RedisInfo = request.getfixturevalue("redis_server")
    namespace: str = request.getfixturevalue("namespace")
    yield RedisTaskStatusStore(redis_server.client(), namespace=namespace, ttl_s=120)


def life(task_id: str, generation: int = 0) -> list[tasks.TaskUpdate]:
    t = T + timedelta(hours=generation)
    g = {"generation": generation}
    return [
        tasks.queued(task_id, actor="a", queue="q", at=t, retries=0, **g),
        tasks.running(task_id, actor="a", queue="q", at=t, retries=0, enqueued_at=t, **g),
        tasks.queued(task_id, actor="a", queue="q", at=t, retries=1, **g),
        tasks.retrying(task_id, retries=1, error=OSError("flaky"), **g),
        tasks.running(task_id, actor="a", queue="q", at=t, retries=1, enqueued_at=t, **g),
        tasks.succeeded(task_id, at=t, attempts=2, result={"gen": generation}, **g),
    ]


def test_unknown_is_none(store: TaskStatusStore) -> None:
    assert store.get(str(uuid.uuid4())) is None


def test_every_field_round_trips(store: TaskStatusStore) -> None:
    tid = str(uuid.uuid4())
    for update in life(tid)[:4]:
        store.apply(update)
    s = store.get(tid)
    assert s == tasks.TaskStatus(
        task_id=tid, status="retrying", actor="a", queue="q", enqueued_at=T, started_at=T,
        finished_at=None, attempts=1, result=None, error="OSError: flaky",
    )  # fmt: skip


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(order=st.permutations(range(12)))
def test_any_arrival_order_ends_in_the_latest_outcome(
    store: TaskStatusStore, order: list[int]
) -> None:
    tid = str(uuid.uuid4())
    updates = life(tid, 0) + life(tid, 1)  # a life, then a replayed life
    for i in order:
        store.apply(updates[i])
    s = store.get(tid)
    assert s is not None
    assert (s.status, s.attempts, s.result, s.error) == ("succeeded", 2, {"gen": 1}, None)
    assert s.actor == "a" and s.queue == "q"


def test_failed_keeps_the_error_and_wins_over_late_updates(store: TaskStatusStore) -> None:
    tid = str(uuid.uuid4())
    store.apply(tasks.failed(tid, at=T, attempts=3, error=ValueError("x" * 5000)))
    store.apply(tasks.running(tid, actor="a", queue="q", at=T, retries=2, enqueued_at=T))
    s = store.get(tid)
    assert s is not None and s.status == "failed" and s.actor == "a"  # first fields still fill
    assert s.error is not None and s.error.startswith("ValueError: xxx") and len(s.error) == 1000


def test_first_fields_keep_the_first_value(store: TaskStatusStore) -> None:
    """Mutation QA: ``first`` fields are set only where the record has none. A retry's
    re-enqueue must not move ``enqueued_at`` (the task's own enqueue time, shown on the
    status endpoint), and an attempt's start written late (deferred, out of order) must
    not replace the start time of the attempt that came after it."""
    tid = str(uuid.uuid4())
    later = T + timedelta(minutes=5)
    store.apply(tasks.queued(tid, actor="a", queue="q", at=T, retries=0))
    store.apply(tasks.queued(tid, actor="b", queue="r", at=later, retries=1))
    s = store.get(tid)
    assert s is not None and s.status == "retrying"
    assert (s.enqueued_at, s.actor, s.queue) == (T, "a", "q")
    store.apply(tasks.running(tid, actor="a", queue="q", at=later, retries=1, enqueued_at=later))
    store.apply(tasks.running(tid, actor="a", queue="q", at=T, retries=0, enqueued_at=T))
    s = store.get(tid)
    assert s is not None and (s.status, s.attempts) == ("running", 2)
    assert s.started_at == later and s.enqueued_at == T


def test_redis_records_live_for_ttl_seconds(redis_server: RedisInfo, namespace: str) -> None:
    """Mutation QA: ``ttl_s`` is in seconds (PEXPIRE takes milliseconds). Read as
    milliseconds, a task's record vanished a moment after each update and the status
    endpoint answered 404 for a task that had just been accepted."""
    client = redis_server.client()
    store = RedisTaskStatusStore(client, namespace=namespace, ttl_s=120)
    tid = str(uuid.uuid4())
    store.apply(tasks.queued(tid, actor="a", queue="q", at=T, retries=0))
    assert 119_000 <= client.pttl(store.key(tid)) <= 120_000
    store.apply_many([tasks.running(tid, actor="a", queue="q", at=T, retries=0, enqueued_at=T)])
    assert 119_000 <= client.pttl(store.key(tid)) <= 120_000
    assert store.get(tid) is not None
