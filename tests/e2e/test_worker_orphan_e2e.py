"""A worker process whose master is killed outright stops; it does not hang on its log.

dramatiq's worker processes log through a pipe their master reads, and they inherit that
pipe's read end as well. With the master killed outright while the pipe was full, the
writes neither failed nor drained: every thread that logged blocked (the graceful stop
included), and the process stayed, heartbeating and holding its prefetched messages, so
accepted events were never stored (QA: 4 of 7 kills of the worker master under load).
Here the master is stopped (SIGSTOP) under DEBUG logging until the pipe is full, then
killed; the worker process must exit, and every event must be stored once afterwards.
"""

from __future__ import annotations

import signal
import subprocess
import uuid
from pathlib import Path
from threading import Event

import psutil
import pytest

from analytics.adapters.dramatiq_queue import build_broker, events_message
from analytics.adapters.embedded_redis import RedisServerProcess
from analytics.adapters.sqlite_store import SQLiteDatabase, SQLiteEventRepository
from analytics.settings import Settings
from tests.ops_support import make_events
from tests.support import analytics_cmd, child_env, wait_until

pytestmark = pytest.mark.e2e


def test_a_worker_process_outlives_no_killed_master(own_redis: RedisServerProcess,
                                                    tmp_path: Path) -> None:  # fmt: skip
    namespace = f"orphan-{uuid.uuid4().hex[:8]}"
    env = child_env(
        REDIS_HOST="127.0.0.1", REDIS_PORT=str(own_redis.port), ANALYTICS_NAMESPACE=namespace,
        ANALYTICS_DATA_DIR=str(tmp_path / "data"), ANALYTICS_LOG_LEVEL="DEBUG",
        ANALYTICS_WORKER_METRICS_PORT="0", ANALYTICS_HEARTBEAT_TIMEOUT_S="5",
    )  # fmt: skip
    settings = Settings.from_env(env)
    worker = analytics_cmd("worker", "--queues", "high_priority", "--processes", "1",
                           "--threads", "4")  # fmt: skip
    client = own_redis.client()
    with (tmp_path / "worker.log").open("wb") as log:
        master = subprocess.Popen(worker, env=env, stdout=log, stderr=log)  # noqa: S603
    children: list[psutil.Process] = []
    try:
        wait_until(lambda: client.hget(f"{namespace}:ops:workers", "boots"), timeout=60,
                   message="the worker never booted")  # fmt: skip
        children = psutil.Process(master.pid).children()
        broker = build_broker(settings)
        for i in range(400):
            broker.enqueue(events_message(make_events(3, user=f"u{i}")))
        broker.close()
        master.send_signal(signal.SIGSTOP)  # nobody reads the log pipe now: it fills
        wait_until(lambda: client.llen(f"{namespace}:high_priority") < 390, timeout=30,
                   message="the worker took nothing")  # fmt: skip
        Event().wait(3)  # DEBUG lines of a few dozen messages fill the pipe's 64 KiB
        master.kill()  # outright: its children get SIGTERM (PR_SET_PDEATHSIG)
        master.wait(10)
        _, alive = psutil.wait_procs(children, timeout=60)
        assert not alive, "a worker process outlived its killed master"
    finally:
        if master.poll() is None:
            master.kill()
        for p in children:
            if p.is_running():
                p.kill()
    # Nothing lost: a fresh worker takes what the dead one held (its heartbeat is stale).
    with (tmp_path / "worker2.log").open("wb") as log:
        again = subprocess.Popen(worker, env={**env, "ANALYTICS_LOG_LEVEL": "WARNING"},  # noqa: S603
                                 stdout=log, stderr=log)  # fmt: skip
    try:
        repo = SQLiteEventRepository(SQLiteDatabase(settings.sqlite_path))
        wait_until(lambda: repo.count() == 1200, timeout=120,
                   message="accepted events were not all stored")  # fmt: skip
    finally:
        again.terminate()
        again.wait(60)
        client.close()
