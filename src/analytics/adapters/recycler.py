"""Dramatiq middleware: recycle worker processes after N tasks, without losing any.

Dramatiq has no ``max_tasks_per_child``. What it offers is SIGHUP on the master (the
``dramatiq`` CLI process): it sends SIGHUP to every worker process, each stops taking
work, finishes the messages it is running, requeues the ones it had prefetched and exits;
then the master re-executes itself and boots fresh processes. So a process that has
handled ``max_tasks`` messages pauses its worker threads (each finishes the message it
holds and takes no other; prefetched messages are requeued at shutdown) and sends SIGHUP
to its parent, once. A process therefore handles between N and N + threads - 1 tasks. Counters in Redis
(``<ns>:ops:workers``: boots, recycles) make the restarts observable.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import dramatiq
import structlog

log = structlog.get_logger("analytics.worker")


def parent_is_dramatiq_master() -> bool:
    """Only a worker process under the dramatiq CLI may signal its parent (never pytest):
    ``dramatiq ...``, ``python -m dramatiq ...``, or ``analytics worker``, which runs
    dramatiq's CLI in its own process (``cli.run_dramatiq``) and after a reload is
    ``python -m analytics dramatiq ...``."""
    try:
        import psutil  # noqa: PLC0415

        cmdline = psutil.Process(os.getppid()).cmdline()
    except Exception:  # noqa: BLE001 - no parent info: do not signal
        return False
    if any(part.endswith("dramatiq") or "dramatiq/__main__" in part for part in cmdline):
        return True
    if "-m" in cmdline and "dramatiq" in cmdline:
        return True
    return _is_analytics_worker(cmdline)


def _is_analytics_worker(cmdline: list[str]) -> bool:
    """``python -m analytics worker|dramatiq ...`` or the ``analytics worker|dramatiq ...``
    script (``dramatiq``: what a reload of ``analytics worker`` re-executes)."""
    for i, part in enumerate(cmdline[:-1]):
        runs_analytics = (part == "analytics" and i > 0 and cmdline[i - 1] == "-m") or (
            os.path.basename(part) == "analytics"
        )
        if runs_analytics and cmdline[i + 1] in ("worker", "dramatiq"):
            return True
    return False


class WorkerRecycler(dramatiq.Middleware):
    def __init__(self, max_tasks: int, *, client: Any = None, namespace: str = "analytics") -> None:
        self.max_tasks = max_tasks
        self.client = client
        self.key = f"{namespace}:ops:workers"
        self.count = 0
        self.signalled = False
        self.enabled = False
        self.worker: Any = None
        self.can_signal = False
        self.master = 0
        self._lock = threading.Lock()

    def _bump(self, field: str) -> None:
        if self.client is not None:
            try:
                self.client.hincrby(self.key, field, 1)
            except Exception:  # noqa: BLE001 - a counter must never stop a worker
                log.warning("worker counter not updated", field=field)

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        self.enabled = self.max_tasks > 0 and parent_is_dramatiq_master()
        self.can_signal = parent_is_dramatiq_master()  # recycle() for other reasons (memory)
        self.master = os.getppid()
        self.worker = worker
        self._bump("boots")
        log.info("worker process started", pid=os.getpid(), recycle_after=self.max_tasks)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        log.info("worker process stopping", pid=os.getpid(), tasks=self.count)
        if self.client is not None:
            try:
                self.client.hset(f"{self.key}:tasks", str(os.getpid()), self.count)
            except Exception:  # noqa: BLE001
                log.warning("worker task count not recorded", pid=os.getpid())

    def after_process_message(
        self, broker: dramatiq.Broker, message: Any, *, result: object = None,
        exception: BaseException | None = None,
    ) -> None:  # fmt: skip
        self._count()

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self._count()

    def _count(self) -> None:
        with self._lock:
            self.count += 1
            due = self.enabled and not self.signalled and self.count >= self.max_tasks
            if due:
                self.signalled = True
        if due:
            self._bump("recycles")
            log.info("worker recycling", pid=os.getpid(), tasks=self.count)
            for thread in getattr(self.worker, "workers", ()):
                thread.pause()  # sets a flag only: safe from inside a worker thread
            self._signal_master()

    def recycle(self, reason: str) -> bool:
        """Recycle this process now, the same way as after N tasks, once; for ``reason``
        (e.g. ``memory``: adapters/memory_limit.py). False when it cannot (not under the
        dramatiq CLI) or a recycle is already under way."""
        with self._lock:
            if not self.can_signal or self.signalled:
                return False
            self.signalled = True
        self._bump("recycles")
        self._bump(f"recycles_{reason}")
        log.info("worker recycling", pid=os.getpid(), tasks=self.count, reason=reason)
        for thread in getattr(self.worker, "workers", ()):
            thread.pause()
        self._signal_master()
        return True

    def _signal_master(self) -> None:
        """SIGHUP to the master this process booted under, if it is still its parent. Its
        master gone, ``getppid()`` names whoever adopted the orphan (init, a subreaper)
        or, its pid reused, any process: it must not get the SIGHUP (nobody would reload
        this process anyway; it stops on the SIGTERM its master's death sent)."""
        if os.getppid() != self.master:
            log.warning("worker recycling skipped: its master is gone", pid=os.getpid())
            return
        os.kill(self.master, signal.SIGHUP)


class ThreadWatch(dramatiq.Middleware):
    """Recycle a worker process that lost one of its worker or consumer threads.

    dramatiq's worker thread catches everything an actor raises, but an exception that
    escapes its after-hooks (a ``BaseException`` such as the time limit's interrupt landing
    in one) ends the thread, and nothing starts it again: the process keeps its heartbeat
    and its prefetched messages while fewer threads, at last none, work on them. A
    watcher checks the threads every ``interval_s`` and, once one is gone, logs it and
    recycles the process like after N tasks (``WorkerRecycler.recycle``): the master
    starts a fresh one and the held messages are requeued. Counted as
    ``recycles_thread_died`` (``<ns>:ops:workers``) and
    ``analytics_worker_recycles_total{reason="thread_died"}``.
    """

    def __init__(
        self,
        *,
        recycle: Callable[[str], bool],
        interval_s: float = 5.0,
        on_recycle: Callable[[], None] | None = None,
    ) -> None:
        self.recycle = recycle
        self.interval_s = interval_s
        self.on_recycle = on_recycle
        self._stop = threading.Event()
        self.worker: Any = None
        self.recycled = False

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        self.worker = worker
        threading.Thread(target=self._watch, name="thread-watch", daemon=True).start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        self._stop.set()

    def dead_threads(self) -> list[str]:
        worker = self.worker
        threads = [*getattr(worker, "workers", ()), *getattr(worker, "consumers", {}).values()]
        return [t.name for t in threads if not t.is_alive()]

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            dead = self.dead_threads()
            if dead and not self._stop.is_set():
                log.error("worker thread died: recycling the process", pid=os.getpid(),
                          threads=dead)  # fmt: skip
                self.recycled = self.recycle("thread_died")
                if self.recycled and self.on_recycle is not None:
                    self.on_recycle()
                return
