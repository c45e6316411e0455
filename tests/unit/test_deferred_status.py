"""Running records written in the background (task_status_middleware.DeferredUpdates)."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime

import pytest
import structlog
import structlog.testing

from analytics.adapters.memory import InMemoryTaskStatusStore
from analytics.adapters.task_status_middleware import DeferredUpdates
from analytics.domain import tasks
from tests.support import in_forked_child

pytestmark = pytest.mark.unit

T = datetime(2026, 3, 1, tzinfo=UTC)


def running(task_id: str) -> tasks.TaskUpdate:
    return tasks.running(task_id, actor="a", queue="q", at=T, retries=0, enqueued_at=T)


class Recorder:
    """apply_many that records its batches; it can be held, to let submits pile up."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, updates: list[tasks.TaskUpdate]) -> None:
        self.entered.set()
        self.gate.wait(5)
        self.batches.append([u.task_id for u in updates])


def test_everything_submitted_is_written_once_and_in_order():
    rec = Recorder()
    deferred = DeferredUpdates(rec)
    for i in range(200):
        deferred.submit(running(f"m{i}"))
    assert deferred.flush(5)
    written = [t for batch in rec.batches for t in batch]
    assert written == [f"m{i}" for i in range(200)]


def test_updates_queued_during_a_write_go_together_in_the_next():
    rec = Recorder()
    deferred = DeferredUpdates(rec)
    rec.gate.clear()
    deferred.submit(running("first"))
    assert rec.entered.wait(5)  # the writer holds "first" and waits on the gate
    for i in range(50):
        deferred.submit(running(f"m{i}"))
    rec.gate.set()
    assert deferred.flush(5)
    assert rec.batches == [["first"], [f"m{i}" for i in range(50)]]  # one write, not fifty


def test_a_failed_write_is_dropped_and_the_writer_goes_on():
    calls: list[int] = []

    def flaky(updates: list[tasks.TaskUpdate]) -> None:
        calls.append(len(updates))
        if len(calls) == 1:
            raise ConnectionError("redis is down")

    deferred = DeferredUpdates(flaky)
    with structlog.testing.capture_logs() as logged:
        deferred.submit(running("lost"))
        assert deferred.flush(5)
        deferred.submit(running("kept"))
        assert deferred.flush(5)
    assert calls == [1, 1]
    assert [e["event"] for e in logged] == ["task status not recorded"]
    assert logged[0]["error"] == "redis is down" and logged[0]["updates"] == 1


def test_a_late_running_record_keeps_the_outcome_and_gives_the_start():
    store = InMemoryTaskStatusStore()
    store.apply(tasks.queued("m", actor="a", queue="q", at=T, retries=0))
    store.apply(tasks.succeeded("m", at=T, attempts=1, result={"stored": 1}))
    deferred = DeferredUpdates(lambda updates: [store.apply(u) for u in updates])
    deferred.submit(running("m"))
    assert deferred.flush(5)
    status = store.get("m")
    assert status is not None
    assert (status.status, status.attempts, status.started_at) == ("succeeded", 1, T)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_writes_its_own_updates_not_its_parent_s():
    """The parent has a writer thread and an update held in its queue at fork; the child
    (which has no writer thread) must start its own and write only its own update."""
    rec = Recorder()
    deferred = DeferredUpdates(rec)
    rec.gate.clear()
    deferred.submit(running("parent-1"))
    assert rec.entered.wait(5)
    deferred.submit(running("parent-2"))  # queued behind the held write

    def in_child() -> str:
        rec.batches.clear()
        rec.gate.set()
        deferred.submit(running("child"))
        ok = deferred.flush(5)
        return f"{ok}:{rec.batches}"

    child = in_forked_child(in_child)
    rec.gate.set()
    assert deferred.flush(5)
    assert child == "True:[['child']]"
    assert rec.batches == [["parent-1"], ["parent-2"]]
