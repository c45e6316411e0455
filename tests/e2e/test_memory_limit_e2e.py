"""A real ``analytics worker`` with a memory limit below what a Python worker needs: each
process is recycled after its first message (the N-tasks mechanism: pause + SIGHUP to the
dramatiq master), the recycles are logged and counted, and every event is stored once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_worker_lifecycle import Rig
from tests.support import wait_until

pytestmark = pytest.mark.e2e


def test_worker_over_its_memory_limit_is_recycled_and_loses_nothing(
    redis_server: Any, namespace: str, data_dir: Path
) -> None:
    rig = Rig(
        redis_server, namespace, data_dir,
        ANALYTICS_WORKER_MAX_TASKS="0",  # never for tasks: only memory recycles here
        ANALYTICS_WORKER_MAX_RSS_MB="16",  # below any Python worker's RSS
        ANALYTICS_WORKER_METRICS_PORT="0",
    )  # fmt: skip
    try:
        ids = rig.send(4, 5)
        rig.start_worker("--processes", "1", "--threads", "1")
        wait_until(lambda: rig.repo.count() == 20, timeout=120, message="not all events stored")
        wait_until(lambda: rig.stats().get("recycles_memory", 0) >= 2, timeout=60,
                   message="no memory recycles counted")  # fmt: skip
        stats = rig.stats()
        assert stats["recycles"] >= stats["recycles_memory"]
        assert stats["boots"] >= 3  # the master restarted its process after each recycle
        assert set(rig.repo.get_many(ids)) == ids
        time.sleep(0.3)
        assert rig.repo.count() == 20  # each event stored exactly once
        assert rig.procs[0].poll() is None  # the master keeps running across reloads
    finally:
        rig.close()
