"""Dramatiq middleware: recycle a worker process whose resident memory passes a limit.

The recycling itself is the one that follows N tasks (``adapters/recycler.py``): the
process pauses its worker threads (each finishes the message it holds; prefetched
messages are requeued at shutdown) and sends SIGHUP once to the dramatiq master, which
restarts its worker processes gracefully. Nothing is lost: a message is acknowledged only
after its actor returned, and every actor is idempotent.

RSS is read with psutil after every message (one ``/proc`` read, ~10 us); a limit of 0
turns the check off. Each recycle for memory is logged with the RSS and the limit, and
counted (``recycles`` here; ``analytics_worker_recycles_total{reason="memory"}`` and the
``recycles_memory`` field of ``<ns>:ops:workers`` where the worker is wired to them).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import dramatiq
import structlog

log = structlog.get_logger("analytics.worker")


def current_rss() -> int:
    import psutil  # noqa: PLC0415

    return int(psutil.Process().memory_info().rss)


class MemoryLimit(dramatiq.Middleware):
    def __init__(
        self,
        max_rss_bytes: int,
        *,
        recycle: Callable[[str], bool],
        rss: Callable[[], int] = current_rss,
        on_recycle: Callable[[int], None] | None = None,
    ) -> None:
        self.max_rss_bytes = max_rss_bytes
        self.recycle = recycle
        self.rss = rss
        self.on_recycle = on_recycle
        self.recycles = 0
        self.last_rss = 0
        self._lock = threading.Lock()
        self._done = False

    def after_process_message(
        self, broker: dramatiq.Broker, message: Any, *, result: object = None,
        exception: BaseException | None = None,
    ) -> None:  # fmt: skip
        self.check()

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self.check()

    def check(self) -> bool:
        """Recycle (once per process) when over the limit; True if it asked for it."""
        if self.max_rss_bytes <= 0 or self._done:
            return False
        rss = self.rss()
        self.last_rss = rss
        if rss <= self.max_rss_bytes:
            return False
        with self._lock:
            if self._done:
                return False
            self._done = True
        log.warning(
            "worker over its memory limit: recycling",
            pid=os.getpid(), rss_mb=round(rss / 2**20, 1),
            limit_mb=round(self.max_rss_bytes / 2**20, 1),
        )  # fmt: skip
        asked = self.recycle("memory")
        if asked:
            self.recycles += 1
            if self.on_recycle is not None:
                try:
                    self.on_recycle(rss)
                except Exception:  # noqa: BLE001, S110 - a counter must never stop a worker
                    pass
        return asked
