"""Task status: monotonic merges, and the middleware's lifecycle on a StubBroker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import SkipMessage
from hypothesis import given
from hypothesis import strategies as st

from analytics.adapters.memory import InMemoryTaskStatusStore
from analytics.adapters.task_status_middleware import TaskStatusMiddleware, install
from analytics.application.task_status import get_task_status
from analytics.domain import tasks
from analytics.domain.clock import FixedClock
from analytics.domain.errors import NotFound, StorageUnavailable
from tests.support import wait_until

T = datetime(2026, 3, 1, tzinfo=UTC)


def lifecycle() -> list[tasks.TaskUpdate]:
    """queued, running, attempt 1 fails and is retried, running, succeeded."""
    return [
        tasks.queued("m", actor="a", queue="q", at=T, retries=0),
        tasks.running("m", actor="a", queue="q", at=T, retries=0, enqueued_at=T),
        tasks.queued("m", actor="a", queue="q", at=T, retries=1),
        tasks.retrying("m", retries=1, error=ValueError("boom")),
        tasks.running("m", actor="a", queue="q", at=T, retries=1, enqueued_at=T),
        tasks.succeeded("m", at=T, attempts=2, result={"stored": 3}),
    ]


@given(st.permutations(lifecycle()))
def test_updates_in_any_order_end_in_the_outcome(order: list[tasks.TaskUpdate]) -> None:
    store = InMemoryTaskStatusStore()
    for update in order:
        store.apply(update)
    status = store.get("m")
    assert status is not None
    assert (status.status, status.attempts, status.result) == ("succeeded", 2, {"stored": 3})
    assert status.actor == "a" and status.enqueued_at == T
    assert status.started_at == T  # a running record written late still gives its start


def test_a_late_queued_never_hides_running() -> None:
    store = InMemoryTaskStatusStore()
    store.apply(lifecycle()[1])
    store.apply(lifecycle()[0])
    status = store.get("m")
    assert status is not None and status.status == "running" and status.queue == "q"


def test_result_summary_is_small() -> None:
    assert tasks.summarize_result({"stored": 1}) == {"stored": 1}
    assert tasks.summarize_result("x" * 5000) == {"type": "str", "truncated": True, "bytes": 5002}
    assert tasks.summarize_result(object())["type"] == "object"


def test_a_large_report_keeps_its_counts_and_names_what_it_left_out() -> None:
    """A DynamoDB drill: a reconcile with drift filled 2 KiB with its examples, and its
    task status showed neither drifted_counters nor repaired."""
    report = {"start": "2026-11-28T00:00:00+00:00", "events_scanned": 287, "drifted_counters": 29,
              "repaired": True, "missing_raw": 0, "examples": [{"kind": "c", "delta": 2}] * 100}  # fmt: skip
    summary = tasks.summarize_result(report)
    assert summary["truncated"] is True and summary["dropped"] == ["examples"]
    assert (summary["drifted_counters"], summary["repaired"], summary["events_scanned"]) == (29, True, 287)
    assert summary["start"] == "2026-11-28T00:00:00+00:00"
    huge = {f"k{i}": "v" * 150 for i in range(40)}  # its short members alone exceed 2 KiB
    assert tasks.summarize_result(huge) == {"type": "dict", "truncated": True, "bytes": len(tasks._encode(huge))}
    # A review: the summary's own keys must not hide the result's, nor outgrow 2 KiB.
    own = {"type": "day", "dropped": 7, "count": 3, "rows": ["x" * 100] * 30}
    assert tasks.summarize_result(own) == {"type": "dict", "truncated": True, "bytes": len(tasks._encode(own)),
                                           "dropped": ["dropped", "rows", "type"], "count": 3}  # fmt: skip
    wide = {f"long{i:03}": "y" * 300 for i in range(300)} | {"count": 1}
    summary = tasks.summarize_result(wide)
    assert len(tasks._encode(summary)) <= tasks.MAX_RESULT_BYTES and summary["count"] == 1
    assert len(summary["dropped"]) == 20  # the first names of what was left out


def test_unknown_task_is_not_found() -> None:
    with pytest.raises(NotFound):
        get_task_status("nope", store=InMemoryTaskStatusStore())
    with pytest.raises(NotFound):
        get_task_status("../../etc", store=InMemoryTaskStatusStore())


# --- the middleware on a StubBroker -----------------------------------------------------
@pytest.fixture
def env() -> Iterator[tuple[StubBroker, InMemoryTaskStatusStore, Worker]]:
    broker = StubBroker()
    broker.declare_queue("default")
    store = InMemoryTaskStatusStore()
    install(broker, TaskStatusMiddleware(store, FixedClock(T)))
    worker = Worker(broker, worker_threads=1, worker_timeout=50)
    yield broker, store, worker
    worker.stop()
    broker.close()


def drain(broker: StubBroker, worker: Worker, *, fail_fast: bool = False) -> None:
    """Start the worker and wait until every message on ``default`` is settled."""
    worker.start()
    broker.join("default", fail_fast=fail_fast)
    worker.join()


def status(store: InMemoryTaskStatusStore, message_id: str) -> tasks.TaskStatus:
    found = store.get(message_id)
    assert found is not None
    return found


def test_success(env) -> None:  # type: ignore[no-untyped-def]
    broker, store, worker = env
    gate = threading.Event()

    @dramatiq.actor(broker=broker, actor_name="ok")
    def ok() -> dict[str, int]:
        gate.wait(5)
        return {"done": 1}

    message = ok.send()
    assert status(store, message.message_id).status == "queued"
    worker.start()
    wait_until(lambda: status(store, message.message_id).status == "running", timeout=5)
    gate.set()
    broker.join("default")
    worker.join()
    s = status(store, message.message_id)
    assert (s.status, s.attempts, s.result, s.error) == ("succeeded", 1, {"done": 1}, None)
    assert s.actor == "ok" and s.queue == "default" and s.started_at == s.finished_at == T


def test_a_wall_clock_stepped_back_mid_task_never_finishes_it_before_it_started() -> None:
    """The host's clock stepped back while the task ran (NTP, a VM resumed; it happened
    in a CI run: finished_at 0.2 ms before started_at): the record ends when it began."""
    broker = StubBroker()
    broker.declare_queue("default")
    store, clock = InMemoryTaskStatusStore(), FixedClock(T)
    install(broker, TaskStatusMiddleware(store, clock))
    worker = Worker(broker, worker_threads=1, worker_timeout=50)
    gate = threading.Event()

    @dramatiq.actor(broker=broker, actor_name="slow")
    def slow() -> None:
        gate.wait(5)

    try:
        message = slow.send()
        worker.start()
        wait_until(lambda: status(store, message.message_id).status == "running", timeout=5)
        clock.at = T - timedelta(milliseconds=5)  # the step back, mid-task
        gate.set()
        broker.join("default")
        worker.join()
        s = status(store, message.message_id)
        assert s.status == "succeeded" and s.started_at == T
        assert s.finished_at is not None and s.finished_at >= s.started_at
    finally:
        worker.stop()
        broker.close()


def test_failed_only_when_retries_are_exhausted(env) -> None:  # type: ignore[no-untyped-def]
    broker, store, worker = env

    @dramatiq.actor(broker=broker, actor_name="bad", max_retries=2, min_backoff=1, max_backoff=2)
    def bad() -> None:
        raise RuntimeError("kaput")

    message = bad.send()
    drain(broker, worker)
    s = status(store, message.message_id)
    assert (s.status, s.attempts, s.error) == ("failed", 3, "RuntimeError: kaput")
    seen = [u.fields.get("status") for u in store.applied]
    assert seen.count("retrying") >= 2 and seen.count("running") == 3


def test_throws_fails_without_retry(env) -> None:  # type: ignore[no-untyped-def]
    broker, store, worker = env

    @dramatiq.actor(broker=broker, actor_name="perm", throws=(ValueError,))
    def perm() -> None:
        raise ValueError("not worth a retry")

    message = perm.send()
    drain(broker, worker)
    s = status(store, message.message_id)
    assert (s.status, s.attempts) == ("failed", 1) and "not worth a retry" in (s.error or "")


def test_a_broken_store_never_breaks_the_work(env) -> None:  # type: ignore[no-untyped-def]
    broker, store, worker = env
    done = []

    def explode(update: tasks.TaskUpdate) -> None:
        raise OSError("status store down")

    store.apply = explode  # type: ignore[method-assign]

    @dramatiq.actor(broker=broker, actor_name="work")
    def work() -> None:
        done.append(1)

    work.send()
    drain(broker, worker, fail_fast=True)
    assert done == [1]


def test_a_replay_starts_a_new_life_that_old_updates_cannot_touch() -> None:
    store = InMemoryTaskStatusStore()
    for update in lifecycle()[:2]:
        store.apply(update)
    store.apply(tasks.failed("m", at=T, attempts=1, error="dead"))
    later = T.replace(hour=5)
    store.apply(tasks.queued("m", actor="a", queue="q", at=later, retries=0, generation=1))
    store.apply(tasks.failed("m", at=T, attempts=1, error="stale"))  # from the old life
    s = status(store, "m")
    assert (s.status, s.error, s.finished_at, s.enqueued_at) == ("queued", None, None, later)


def test_dead_letter_replay_is_followed_by_the_same_id(env) -> None:  # type: ignore[no-untyped-def]
    broker, store, worker = env
    calls: list[int] = []

    @dramatiq.actor(broker=broker, actor_name="once_broken", max_retries=0)
    def once_broken() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first time")
        return "fine"

    message = once_broken.send()
    worker.start()
    broker.join("default", fail_fast=False)
    assert status(store, message.message_id).status == "failed"
    (dead,) = broker.dead_letters
    replay = dead.copy(options={"replays": 1, "retries": 0})  # what the replay tool does
    broker.enqueue(replay)
    broker.join("default", fail_fast=False)
    worker.join()
    s = status(store, message.message_id)
    assert (s.status, s.result, s.error, s.attempts) == ("succeeded", "fine", None, 1)


def test_a_malformed_task_id_is_not_found_without_asking_the_store() -> None:
    """Mutation QA: an id that cannot be a task id (path tricks, spaces, over 128
    characters) is answered "not found" without a store lookup: during a Redis outage
    it stays a 404 instead of a 503, and junk never becomes a Redis key."""

    class DownStore(InMemoryTaskStatusStore):
        def get(self, task_id: str) -> tasks.TaskStatus | None:
            raise StorageUnavailable("task status store: down")

    store = DownStore()
    for junk in ("../../etc", "a b", "", "x" * 129, "id?x=1"):
        with pytest.raises(NotFound):
            get_task_status(junk, store=store)
    with pytest.raises(StorageUnavailable):  # a well-formed id is looked up
        get_task_status("0b8e6f3c-1c1a-4a59-9a57-4d3f1e2a8b7c", store=store)


def test_skipped_messages_are_skipped_unless_dead_lettered(env) -> None:  # type: ignore[no-untyped-def]
    """Mutation QA: a message a middleware skips is recorded "skipped"; one skipped AND
    failed (e.g. AgeLimit: too old, dead-lettered) is "failed". Swapped, an expired task
    showed "skipped" (not in the dead-letter queue, nothing to replay) and a merely
    skipped one showed "failed"."""
    broker, store, worker = env

    class Skipper(dramatiq.Middleware):
        def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
            if message.actor_name == "expired":
                message.fail()
            raise SkipMessage()

    broker.add_middleware(Skipper())

    @dramatiq.actor(broker=broker, actor_name="skipped")
    def skipped() -> None:
        raise AssertionError("never runs")

    @dramatiq.actor(broker=broker, actor_name="expired")
    def expired() -> None:
        raise AssertionError("never runs")

    one, two = skipped.send(), expired.send()
    drain(broker, worker)
    s = status(store, one.message_id)
    assert (s.status, s.error) == ("skipped", "skipped by a middleware")
    f = status(store, two.message_id)
    assert (f.status, f.error) == ("failed", "skipped by a middleware")
    assert [m.message_id for m in broker.dead_letters] == [two.message_id]


def test_without_retries_a_failed_message_is_failed_not_retrying() -> None:
    """Mutation QA: on a broker without the Retries middleware a message whose actor
    raised is acknowledged and over; its record must say "failed". Recorded "retrying",
    a client polling the status endpoint waited forever for a retry that never came."""
    broker = StubBroker(middleware=[])
    broker.declare_queue("default")
    store = InMemoryTaskStatusStore()
    install(broker, TaskStatusMiddleware(store, FixedClock(T)))
    worker = Worker(broker, worker_threads=1, worker_timeout=50)

    @dramatiq.actor(broker=broker, actor_name="bad_once")
    def bad_once() -> None:
        raise RuntimeError("kaput")

    try:
        message = bad_once.send()
        drain(broker, worker)
        s = status(store, message.message_id)
        assert (s.status, s.attempts, s.error) == ("failed", 1, "RuntimeError: kaput")
        assert s.finished_at == T
    finally:
        worker.stop()
        broker.close()
