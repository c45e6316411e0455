"""Crash recovery time: SIGKILL a worker process mid-task, restart it, time the redelivery.

    .venv/bin/python bench/recovery.py [--heartbeat 60] [--chance 10000] [--processes 1]

A private Redis and SQLite under a temporary directory. The test process write-locks the
SQLite file so the worker blocks inside its write (mid-task), SIGKILLs the worker process,
releases the lock, starts a new worker (what a supervisor does) and prints how long until
the 20 events are stored, exactly once. README "Operations / Crash recovery" quotes it.
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

import psutil  # noqa: E402
import redis  # noqa: E402

from analytics.adapters.dramatiq_queue import build_broker, events_message  # noqa: E402
from analytics.adapters.embedded_redis import RedisServerProcess  # noqa: E402
from analytics.adapters.sqlite_store import SQLiteDatabase, SQLiteEventRepository  # noqa: E402
from analytics.settings import Settings  # noqa: E402
from tests.ops_support import make_events  # noqa: E402
from tests.support import analytics_cmd, child_env, free_port  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--heartbeat", type=float, default=60.0)
    ap.add_argument("--chance", type=int, default=10_000)
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="recovery-"))
    port = free_port()
    server = RedisServerProcess(tmp / "redis", port=port).start()
    env = {
        "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port), "ANALYTICS_NAMESPACE": "rec",
        "ANALYTICS_DATA_DIR": str(tmp / "data"), "ANALYTICS_LOG_LEVEL": "WARNING",
        "ANALYTICS_HEARTBEAT_TIMEOUT_S": str(args.heartbeat),
        "ANALYTICS_BROKER_MAINTENANCE_CHANCE": str(args.chance),
    }  # fmt: skip
    settings = Settings.from_env(env)
    broker = build_broker(settings)
    repo = SQLiteEventRepository(SQLiteDatabase(settings.sqlite_path))
    client = redis.Redis(port=port)
    cmd = analytics_cmd("worker", "--queues", "high_priority,aggregations",
                        "--processes", str(args.processes), "--threads", "4")  # fmt: skip
    procs = []
    try:
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        procs.append(subprocess.Popen(cmd, env=child_env(**env), **quiet))  # noqa: S603
        while not client.hget("rec:ops:workers", "boots"):  # booted (schema applied)
            time.sleep(0.1)
        lock = sqlite3.connect(settings.sqlite_path, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        broker.enqueue(events_message(make_events(20)))
        while not any(client.scard(k) for k in client.scan_iter(match="rec:__acks__.*")):
            time.sleep(0.1)
        for child in psutil.Process(procs[0].pid).children():
            child.send_signal(signal.SIGKILL)  # with one process: the one holding it
        killed = time.monotonic()
        procs[0].wait(60)
        lock.execute("ROLLBACK")
        lock.close()
        procs.append(subprocess.Popen(cmd, env=child_env(**env), **quiet))  # noqa: S603
        while repo.count() < 20 and time.monotonic() - killed < args.timeout:
            time.sleep(0.2)
        took = time.monotonic() - killed
        print(f"| heartbeat {args.heartbeat:g} s | chance {args.chance}/1e6 | "
              f"{args.processes} process(es) | stored {repo.count()}/20 | {took:.1f} s |")  # fmt: skip
        return 0 if repo.count() == 20 else 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(30)
        broker.close()
        server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
