"""The worker alone: start-up, drain rate, Redis commands and CPU per message.

    .venv/bin/python bench/worker_drain.py [--messages 1250] [--group 8] [--repeat 3]

Starts a private Redis, queues ``--messages`` ``process_events`` messages of ``--group``
events each through the API's own enqueue path (``bootstrap(...).task_queue``: dramatiq's
dispatch script and the ``queued`` task-status record), then spawns ``analytics worker
--queues high_priority`` (2 processes, the service's default threads, as ``bench/ingest.py``) and
times it from the spawn to the first event in the SQLite store (start-up) and to the last
one (drain). The Redis server's command statistics (``INFO commandstats``, reset before
the spawn; nothing else uses this server; ``total_reads_processed`` counts requests, a
pipeline being one) and the worker's CPU time (its process tree,
reaped) are divided by the number of messages: figures the neighbours on a shared machine
do not move, unlike the times.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from analytics.adapters.embedded_redis import RedisServerProcess
from analytics.adapters.sqlite_store import SQLiteDatabase, SQLiteEventRepository
from analytics.bootstrap import bootstrap
from analytics.settings import Settings
from bench.ingest import env_for
from tests.aggsupport import make_event
from tests.support import free_port


def queue_messages(env: dict[str, str], messages: int, group: int) -> None:
    container = bootstrap(Settings.from_env(env))
    now = datetime.now(UTC)
    for m in range(messages):
        events = [
            make_event(now, event_type=("page_view", "click", "purchase")[k % 3], user=f"u{m}",
                       product=f"p{k}", price="19.99", currency="EUR", quantity=1 + k % 3)
            for k in range(group)
        ]  # fmt: skip
        container.task_queue.enqueue_events(events)
    container.broker.close()


def commandstats(client) -> dict[str, int]:  # type: ignore[no-untyped-def]
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def drain_once(redis: RedisServerProcess, tmp: Path, args: argparse.Namespace) -> dict[str, float]:
    ns = f"drain-{uuid.uuid4().hex[:6]}"
    env = env_for(redis, tmp / ns, ns)
    (tmp / ns).mkdir(parents=True)
    queue_messages(env, args.messages, args.group)
    expected = args.messages * args.group
    repo = SQLiteEventRepository(SQLiteDatabase(tmp / ns / "events.sqlite3"))
    client = redis.client()
    client.config_resetstat()  # our private server: only the worker talks to it from here
    cpu0 = children_cpu()
    log = (tmp / "worker.log").open("ab")
    t0 = time.perf_counter()
    worker = subprocess.Popen(
        [sys.executable, "-m", "analytics", "worker", "--queues", "high_priority",
         "--processes", str(args.worker_processes), "--threads", str(args.worker_threads)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    t_first = None
    while (count := repo.count()) < expected:
        if t_first is None and count:
            t_first = time.perf_counter() - t0
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.returncode}; see {tmp / 'worker.log'}")
        time.sleep(0.005)
    t_all = time.perf_counter() - t0
    stats = commandstats(client)
    reads = int(client.info("stats")["total_reads_processed"])  # ~ round trips (requests)
    worker.terminate()
    worker.wait(60)
    cpu = children_cpu() - cpu0
    per = {k: v / args.messages for k, v in stats.items() if k not in ("info", "config|resetstat")}
    return {"first": t_first if t_first is not None else t_all, "all": t_all, "cpu": cpu,
            "reads": reads / args.messages, "cmds": sum(per.values()),
            **{f"cmd:{k}": v for k, v in per.items()}}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--messages", type=int, default=1250)
    ap.add_argument("--group", type=int, default=8, help="events per message")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--worker-processes", type=int, default=2)
    ap.add_argument("--worker-threads", type=int, default=Settings.model_fields["worker_threads"].default,
                    help="default: the service's own (ANALYTICS_WORKER_THREADS)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="analytics-bench-drain-"))
    redis = RedisServerProcess(tmp / "redis", port=free_port()).start()
    n = args.messages * args.group
    try:
        print(f"{args.messages:,} messages x {args.group} events = {n:,} events; worker "
              f"{args.worker_processes}x{args.worker_threads}; {os.cpu_count()} CPUs")  # fmt: skip
        for i in range(args.repeat):
            r = drain_once(redis, tmp, args)
            cmds = ", ".join(
                f"{k[4:]} {v:.2f}"
                for k, v in sorted(r.items())
                if k.startswith("cmd:") and v >= 0.01
            )
            print(f"run {i + 1}: start-up (spawn to first stored) {r['first']:.2f}s; all stored "
                  f"{r['all']:.2f}s ({n / r['all']:,.0f} events/s; after the first "
                  f"{n / max(r['all'] - r['first'], 1e-9):,.0f} events/s); worker CPU "
                  f"{r['cpu']:.2f}s ({r['cpu'] / args.messages * 1e3:.2f} ms/message, "
                  f"{r['cpu'] / n * 1e6:.0f} us/event); Redis round trips (reads) per "
                  f"message {r['reads']:.2f}, commands per message {r['cmds']:.2f}: {cmds}")  # fmt: skip
    finally:
        redis.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
