"""Real ``analytics worker`` processes: recycling after N tasks, SIGTERM under load, SIGKILL.

Each test runs the worker as the operator does (``python -m analytics worker``), feeds it
``process_events`` messages through a Redis broker of its own, and counts what SQLite
holds afterwards. Heartbeat timeout and broker maintenance are shortened by settings.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from analytics.adapters.dramatiq_queue import build_broker, events_message
from analytics.adapters.sqlite_aggregates import SQLiteAggregateStore
from analytics.adapters.sqlite_store import SQLiteDatabase, SQLiteEventRepository
from analytics.domain.buckets import cover, epoch_minute
from analytics.settings import Settings
from tests.ops_support import make_events
from tests.support import AnalyticsProcess, child_env, free_port, json_object, stop_all, wait_until

pytestmark = pytest.mark.e2e


class Rig:
    def __init__(self, redis_server: Any, namespace: str, data_dir: Path, **extra: str) -> None:
        self.env = {
            **redis_server.env(namespace),
            "ANALYTICS_DATA_DIR": str(data_dir),
            "ANALYTICS_HEARTBEAT_TIMEOUT_S": "2",
            "ANALYTICS_BROKER_MAINTENANCE_CHANCE": "200000",
            "ANALYTICS_LOG_FORMAT": "console",
            **extra,
        }
        self.settings = Settings.from_env(self.env)
        self.broker = build_broker(self.settings)
        self.repo = SQLiteEventRepository(SQLiteDatabase(self.settings.sqlite_path))
        self.client = redis_server.client()
        self.ns = namespace
        self.workers: list[AnalyticsProcess] = []

    @property
    def procs(self) -> list[subprocess.Popen[bytes]]:
        return [w.proc for w in self.workers]

    def start_worker(self, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
        worker = AnalyticsProcess("worker", "--queues", "high_priority", *args,
                                  env=child_env(**self.env), log=log).start()  # fmt: skip
        self.workers.append(worker)
        return worker.proc

    def send(self, groups: int, size: int) -> set[Any]:
        ids = set()
        for _ in range(groups):
            events = make_events(size)
            ids |= {e.event_id for e in events}
            self.broker.enqueue(events_message(events))
        return ids

    def stats(self) -> dict[str, int]:
        raw = self.client.hgetall(f"{self.ns}:ops:workers")
        return {k.decode(): int(v) for k, v in raw.items()}

    def summary_of(self, ids: set[Any]) -> Any:
        """The aggregates' summary over the minutes these stored events fall in (the
        counters live in the same SQLite database as the events)."""
        events = self.repo.get_many(ids).values()
        first = epoch_minute(min(e.timestamp for e in events))
        last = epoch_minute(max(e.timestamp for e in events)) + 1
        (summary,) = SQLiteAggregateStore(self.repo.db).summarize([cover(first, last)], None)
        return summary

    def pending(self) -> int:
        return int(self.client.llen(f"{self.ns}:high_priority"))

    def close(self) -> None:
        stop_all(self.workers)
        self.broker.close()


@pytest.fixture
def rig_factory(redis_server: Any, namespace: str, data_dir: Path) -> Iterator[Any]:
    rigs: list[Rig] = []

    def make(**extra: str) -> Rig:
        rig = Rig(redis_server, namespace, data_dir, **extra)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


def test_recycles_after_n_tasks_and_loses_nothing(rig_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    exporter = free_port()
    rig = rig_factory(ANALYTICS_WORKER_MAX_TASKS="5", ANALYTICS_LOG_FORMAT="json",
                      ANALYTICS_WORKER_METRICS_PORT=str(exporter))  # fmt: skip
    ids = rig.send(10, 2)
    log = tmp_path / "worker.log"
    rig.start_worker("--processes", "1", "--threads", "1", log=log)
    wait_until(lambda: rig.repo.count() == 20, timeout=90, message="not all events stored")
    # 10 tasks, 5 per process, one worker thread: 2 recycles, and a 3rd process now running.
    wait_until(lambda: rig.stats().get("recycles") == 2 and rig.stats().get("boots") == 3,
               timeout=30, message="unexpected number of restarts")  # fmt: skip
    assert set(rig.repo.get_many(ids)) == ids
    tasks = rig.client.hgetall(f"{rig.ns}:ops:workers:tasks")
    assert sorted(int(v) for v in tasks.values()) == [5] * 2  # each recycled process: exactly N
    assert rig.procs[0].poll() is None  # the master keeps running across reloads
    declared = {m.decode() for m in rig.client.smembers(f"{rig.ns}:ops:actors")}
    assert {"process_events", "purge_events_before", "check_dead_letters"} <= declared
    # The reload re-executed the master through this service's CLI, not "python -m
    # dramatiq": its own lines and the reloaded processes' stay JSON, like the first ones.
    cmdline = psutil.Process(rig.procs[0].pid).cmdline()
    assert cmdline[1:4] == ["-m", "analytics", "dramatiq"], cmdline
    # What the old master forked and dramatiq's reload does not wait for (the metrics
    # exporter) is reaped by the new one: a zombie per reload piled up (RabbitMQ QA), and
    # the new exporter found its port still taken.
    master = psutil.Process(rig.procs[0].pid)
    wait_until(lambda: not [c for c in master.children() if c.status() == psutil.STATUS_ZOMBIE],
               timeout=15, message=f"zombies: {[(c.pid, c.status()) for c in master.children()]}")  # fmt: skip
    wait_until(lambda: _answers(exporter), timeout=15, message="no exporter after the reloads")
    def boots_logged() -> int:  # the master's line can follow its worker's first record
        return log.read_text().count("is booting up.")

    wait_until(lambda: boots_logged() == 3, timeout=10, message=f"{boots_logged()} boots logged")
    lines = log.read_text().splitlines()
    not_json = [line for line in lines if json_object(line) is None]
    assert not not_json, not_json[:5]
    # The reloaded master owns the metrics directory now: it is removed when it stops
    # (it outlived a recycled worker in /dev/shm, QA).
    mp_dir = Path(psutil.Process(rig.procs[0].pid).environ()["PROMETHEUS_MULTIPROC_DIR"])
    assert mp_dir.is_dir()
    rig.close()
    assert not mp_dir.exists()



def _answers(port: int) -> bool:
    import urllib.request  # noqa: PLC0415

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:  # noqa: S310
            return bool(resp.status == 200)
    except OSError:
        return False


def test_a_master_killed_outright_takes_the_processes_it_forked_with_it(rig_factory) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL of the worker's master (the OOM killer, ``kill -9``): its worker processes
    and its metrics exporter kept running as orphans, consuming, and a supervisor's restart
    then ran a second group beside them with the exporter's port taken. They get SIGTERM
    when the master dies (PR_SET_PDEATHSIG, set in every fork) and stop; what they held
    goes back to the queue as for any stopped worker."""
    from tests.support import free_port  # noqa: PLC0415

    rig = rig_factory(ANALYTICS_WORKER_METRICS_PORT=str(free_port()))
    ids = rig.send(2, 3)
    master = psutil.Process(rig.start_worker("--processes", "2", "--threads", "2").pid)
    wait_until(lambda: rig.repo.count() == 6, timeout=60, message="the worker never stored")
    wait_until(lambda: len(master.children()) == 3, timeout=30,
               message="two worker processes and the exporter")  # fmt: skip
    forked = master.children()
    master.kill()

    def gone(p: psutil.Process) -> bool:
        try:
            return p.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    try:
        wait_until(lambda: all(gone(p) for p in forked), timeout=30,
                   message="the master's forks outlived it")  # fmt: skip
    finally:
        for p in forked:  # never leave orphans behind, even when the test fails
            if not gone(p):
                p.kill()
    assert set(rig.repo.get_many(ids)) == ids


def test_sigterm_under_load_loses_nothing_and_exits_cleanly(rig_factory) -> None:  # type: ignore[no-untyped-def]
    rig = rig_factory(ANALYTICS_WORKER_MAX_TASKS="0")
    # Enough work that the stop comes mid-way: a worker process notices SIGTERM within a
    # second, and the worker stores a few thousand events per second.
    groups = 2000
    ids = rig.send(groups, 5)
    proc = rig.start_worker("--processes", "2", "--threads", "4")
    wait_until(lambda: rig.repo.count() >= 5, timeout=60, message="worker did not start")
    proc.send_signal(signal.SIGTERM)  # the master only
    assert proc.wait(60) == 0  # clean exit
    stored_at_stop = rig.repo.count()
    print(f"stored {stored_at_stop} of {groups * 5} events when the worker stopped")
    assert stored_at_stop % 5 == 0  # whole messages only: nothing half-done
    held = sum(rig.client.scard(k) for k in rig.client.scan_iter(match=f"{rig.ns}:__acks__.*"))
    assert held == 0  # prefetched messages were requeued, none left in a dead worker's hands
    assert rig.pending() == groups - stored_at_stop // 5 > 0  # under load: the rest is queued
    rig.start_worker("--processes", "1", "--threads", "4")
    wait_until(lambda: rig.repo.count() == groups * 5, timeout=90, message="events lost")
    assert set(rig.repo.get_many(ids)) == ids


def test_sigkill_mid_task_is_redelivered_after_heartbeat_timeout(rig_factory) -> None:  # type: ignore[no-untyped-def]
    rig = rig_factory(ANALYTICS_WORKER_MAX_TASKS="0")
    proc = rig.start_worker("--processes", "1", "--threads", "1")
    wait_until(lambda: rig.stats().get("boots") == 1, timeout=30, message="worker not up")
    lock = sqlite3.connect(rig.settings.sqlite_path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # the worker's write will block: the task is mid-flight
    ids = rig.send(1, 20)
    acks = f"{rig.ns}:__acks__.*"
    wait_until(lambda: any(rig.client.scard(k) for k in rig.client.scan_iter(match=acks)),
               timeout=30, message="message never fetched")  # fmt: skip
    master = psutil.Process(proc.pid)
    child = master.children()[0]
    child.send_signal(signal.SIGKILL)
    proc.wait(30)  # dramatiq stops the group when a worker process dies
    lock.execute("ROLLBACK")
    lock.close()
    assert rig.repo.count() == 0
    killed_at = time.monotonic()
    rig.start_worker("--processes", "1", "--threads", "1")  # the supervisor's restart
    wait_until(lambda: rig.repo.count() == 20, timeout=60, message="not redelivered")
    print(f"redelivered and stored {time.monotonic() - killed_at:.1f} s after the SIGKILL "
          f"(heartbeat timeout 2 s)")  # fmt: skip
    assert set(rig.repo.get_many(ids)) == ids
    time.sleep(0.5)
    assert rig.repo.count() == 20  # stored exactly once
    # ... and counted exactly once in the aggregates (same SQLite database).
    summary = rig.summary_of(ids)
    assert summary.count == 20 and summary.unique_users == 1


class _PrivateRedis:
    """A private redis-server in the shape Rig takes: this test pauses every client."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def env(self, namespace: str) -> dict[str, str]:
        return {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(self.server.port),
                "REDIS_DB": "0", "ANALYTICS_NAMESPACE": namespace}  # fmt: skip

    def client(self) -> Any:
        return self.server.client()


def test_sigkill_after_the_store_and_before_the_ack_stores_and_counts_once(
    own_redis: Any, data_dir: Path
) -> None:
    """The redelivery that matters for double counting: the killed worker had already
    COMMITTED the events and their counts, and died before its ack reached Redis. Its
    message comes back and is processed again; the store and the aggregates must ignore
    it (applied markers commit with the counts). Redis is held with ``CLIENT PAUSE
    WRITE`` between the commit and the ack, so the kill lands exactly there."""
    rig = Rig(_PrivateRedis(own_redis), "ackless", data_dir, ANALYTICS_WORKER_MAX_TASKS="0",
              ANALYTICS_REDIS_TIMEOUT_S="1")  # fmt: skip
    try:
        proc = rig.start_worker("--processes", "1", "--threads", "1")
        wait_until(lambda: rig.stats().get("boots") == 1, timeout=30, message="worker not up")
        lock = sqlite3.connect(rig.settings.sqlite_path, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # hold the worker before its store
        ids = rig.send(1, 20)
        acks = f"{rig.ns}:__acks__.*"
        wait_until(lambda: any(rig.client.scard(k) for k in rig.client.scan_iter(match=acks)),
                   timeout=30, message="message never fetched")  # fmt: skip
        rig.client.execute_command("CLIENT", "PAUSE", "60000", "WRITE")  # no ack gets through
        lock.execute("ROLLBACK")
        lock.close()
        wait_until(lambda: rig.repo.count() == 20, timeout=30, message="not stored")
        child = psutil.Process(proc.pid).children()[0]
        child.send_signal(signal.SIGKILL)  # stored and counted, not acknowledged
        proc.wait(30)
        rig.client.execute_command("CLIENT", "UNPAUSE")
        msgs = f"{rig.ns}:high_priority.msgs"  # a message stays here until it is acked
        assert rig.client.hlen(msgs) == 1, "the message was acked before the kill"
        rig.start_worker("--processes", "1", "--threads", "1")
        wait_until(lambda: rig.client.hlen(msgs) == 0, timeout=60,
                   message="the killed worker's message was not redelivered and acked")  # fmt: skip
    finally:
        rig.close()
    assert rig.repo.count() == 20 and set(rig.repo.get_many(ids)) == ids
    assert rig.summary_of(ids).count == 20  # counted once, though processed twice
    markers = rig.repo.db.connect().execute("SELECT COUNT(*) FROM agg_applied").fetchone()[0]
    assert markers == 20


def test_a_worker_process_that_cannot_start_says_why_in_one_json_line(
    redis_server, namespace, data_dir
) -> None:  # type: ignore[no-untyped-def]
    """Its storage unusable (here the events file is not a database): the worker process
    logs the reason with its traceback as one JSON line and exits 1 (uncaught, the
    traceback came as text, a line at a time); the master reports it and stops."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "events.sqlite3").write_bytes(b"this is not a database" * 100)
    env = child_env(**redis_server.env(namespace), ANALYTICS_DATA_DIR=str(data_dir),
                    ANALYTICS_LOG_FORMAT="json")  # fmt: skip
    log = data_dir.parent / "worker-start.log"
    worker = AnalyticsProcess("worker", "--queues", "high_priority", "--processes", "1",
                              env=env, log=log).start()  # fmt: skip
    try:
        assert worker.proc.wait(60) != 0
    finally:
        stop_all([worker])
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert lines and all(json_object(line) is not None for line in lines), lines[:5]
    (failed,) = [json.loads(x) for x in lines if "worker process could not start" in x]
    assert "file is not a database" in failed["exception"]
