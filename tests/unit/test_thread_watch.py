"""A worker process that loses a worker thread is recycled instead of working on with
fewer threads (at last none) while it holds its prefetched messages."""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

from analytics.adapters.recycler import ThreadWatch
from tests.support import wait_until

pytestmark = pytest.mark.unit


class Interrupt(BaseException):
    """What dramatiq's time limit raises: an asynchronous BaseException."""


def interrupt(thread: threading.Thread) -> None:
    """Raise Interrupt inside ``thread`` as dramatiq's time limit does (CPython API)."""
    hit = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident or 0), ctypes.py_object(Interrupt)
    )
    assert hit == 1


def booted(watch: ThreadWatch) -> tuple[Worker, Any]:
    broker = StubBroker()
    broker.add_middleware(watch)
    broker.declare_queue("default")
    worker = Worker(broker, worker_threads=2, worker_timeout=20)
    worker.start()
    return worker, broker


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_worker_thread_recycles_the_process_once() -> None:
    asked: list[str] = []
    counted: list[bool] = []
    watch = ThreadWatch(recycle=lambda reason: asked.append(reason) or True,
                        interval_s=0.02, on_recycle=lambda: counted.append(True))  # fmt: skip
    worker, _ = booted(watch)
    try:
        assert watch.dead_threads() == []
        victim = worker.workers[0]
        interrupt(victim)  # it escapes the thread's loop: dramatiq does not restart it
        victim.join(5)
        assert not victim.is_alive()
        wait_until(lambda: asked, timeout=10, message="no recycle")
        assert asked == ["thread_died"] and counted == [True] and watch.recycled
        assert watch.dead_threads() == [victim.name]
    finally:
        worker.stop()


def test_healthy_threads_and_a_shutdown_recycle_nothing() -> None:
    asked: list[str] = []
    watch = ThreadWatch(recycle=lambda reason: asked.append(reason) or True, interval_s=0.02)
    worker, _ = booted(watch)
    threading.Event().wait(0.2)  # about ten checks of live threads
    assert asked == [] and watch.dead_threads() == []
    worker.stop()  # the threads end, and the watch was told before they did
    assert watch.dead_threads() != []
    threading.Event().wait(0.1)
    assert asked == []
