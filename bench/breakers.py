"""Circuit breaker benchmark: ingest latency while a dependency is out, in one run.

    /work/venv/bin/python bench/breakers.py [--seconds 5] [--processes 1] [--threads 8]

Real processes: a private Redis, ``analytics api`` and ``analytics worker`` (SQLite).

1. storage: ingest p99 with healthy storage (the baseline), then with the SQLite database
   write-locked (``BEGIN EXCLUSIVE`` held by this script) after the worker's storage
   breaker has opened: the worker defers its messages instead of spending its threads in
   busy timeouts, and ingest (which never touches storage) keeps its latency. The figure
   is the ratio of the two p99s (the issue asks for < 2x); then the lock is released and
   the script waits until every accepted event is stored (nothing lost).
2. broker: with Redis stopped, how long an ingest request takes to get its 503, with the
   broker breaker on and off (off: every request waits for the Redis client's retries and
   ``enqueue_timeout_s``).

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from analytics.adapters.embedded_redis import RedisServerProcess  # noqa: E402
from bench.ingest import env_for, single_body, start, stop  # noqa: E402
from bench.loadgen import Result, run  # noqa: E402
from tests.support import free_port  # noqa: E402


def row(name: str, r: Result, base: Result | None) -> str:
    ratio = f"{r.pct(99) / base.pct(99):.2f}x" if base and base.pct(99) else "1.00x"
    errors = {s: n for s, n in r.statuses.items() if not 200 <= s < 300}
    return (f"| {name} | {r.rate():,.0f} req/s | {r.pct(50):.1f} | {r.pct(99):.1f} | {ratio} | "
            f"{errors or ''} |")  # fmt: skip


def stored(path: Path) -> int:
    with sqlite3.connect(path, timeout=30) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])


def time_503(port: int, n: int) -> tuple[list[float], dict[int, int]]:
    """Sequential single-event posts; latency (ms) of each answer, statuses counted."""
    out, statuses = [], {}
    for i in range(n):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        t0 = time.perf_counter()
        conn.request("POST", "/api/v1/analytics/events", body=single_body(i),
                     headers={"Content-Type": "application/json"})  # fmt: skip
        resp = conn.getresponse()
        resp.read()
        out.append((time.perf_counter() - t0) * 1000)
        statuses[resp.status] = statuses.get(resp.status, 0) + 1
        conn.close()
    return out, statuses


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--processes", type=int, default=1, help="load generator processes")
    ap.add_argument("--threads", type=int, default=8, help="connections per process")
    ap.add_argument("--broker-requests", type=int, default=10)
    args = ap.parse_args()
    load = {"seconds": args.seconds, "processes": args.processes, "threads": args.threads}

    tmp = Path(tempfile.mkdtemp(prefix="analytics-breakers-"))
    log = tmp / "bench.log"
    redis = RedisServerProcess(tmp / "redis", port=free_port()).start()
    fast = {
        "ANALYTICS_WEB_WORKERS": "1", "ANALYTICS_WEB_THREADS": "16",
        "ANALYTICS_SQLITE_BUSY_TIMEOUT_S": "2", "ANALYTICS_BREAKER_FAILURE_THRESHOLD": "3",
        "ANALYTICS_BREAKER_RESET_TIMEOUT_S": "2", "ANALYTICS_BREAKER_DEFER_MAX_S": "4",
        "ANALYTICS_REDIS_TIMEOUT_S": "1", "ANALYTICS_ENQUEUE_TIMEOUT_S": "2",
    }  # fmt: skip
    lines = [
        (f"load: {args.processes} x {args.threads} connections, {args.seconds:g}s per phase; "
         "api 1 gunicorn worker x 16 threads; worker 1 process x 4 threads"),
        "",
        "| phase | throughput | p50 ms | p99 ms | p99 vs healthy | non-2xx |",
        "|---|---|---|---|---|---|",
    ]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ns = f"brk-{uuid.uuid4().hex[:6]}"
        env = env_for(redis, tmp / ns, ns, **fast)
        port = free_port()
        url = f"http://127.0.0.1:{port}/api/v1/analytics/events"
        api = start([sys.executable, "-m", "analytics", "api", "--port", str(port)], env,
                    f"http://127.0.0.1:{port}/health", log)  # fmt: skip
        procs.append(api)
        worker = subprocess.Popen(
            [sys.executable, "-m", "analytics", "worker", "--queues", "high_priority",
             "--processes", "1", "--threads", "4"], env=env, stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        procs.append(worker)
        db = tmp / ns / "events.sqlite3"
        healthy = run(url, single_body, **load)
        lines.append(row("storage healthy", healthy, None))
        while stored(db) < healthy.ok:  # drain, so both phases start from an idle worker
            time.sleep(0.1)

        lock = sqlite3.connect(db, timeout=30, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        warm = run(url, single_body, seconds=3, processes=1, threads=2)  # the breaker opens
        outage = run(url, single_body, **load)
        lines.append(row("storage write-locked, breaker open", outage, healthy))
        lock.execute("ROLLBACK")
        lock.close()
        accepted = healthy.ok + warm.ok + outage.ok
        t0 = time.perf_counter()
        deadline = t0 + 120
        while stored(db) < accepted and time.perf_counter() < deadline:
            time.sleep(0.2)
        n = stored(db)
        recovered = time.perf_counter() - t0
        for p in procs:
            stop(p)
        procs.clear()
        lines += [
            "",
            (f"after the lock was released: {n:,} of {accepted:,} accepted events stored "
             f"{recovered:.1f}s later (deferred messages wait out their backoff)"),
            "",
            "| broker | breakers | requests | min ms to the answer | p50 ms | max ms | statuses |",
            "|---|---|---|---|---|---|---|",
        ]

        for label, extra in (("on", {}), ("off", {"ANALYTICS_BREAKERS": "false"})):
            ns = f"brk-{uuid.uuid4().hex[:6]}"
            port = free_port()
            api = start([sys.executable, "-m", "analytics", "api", "--port", str(port)],
                        env_for(redis, tmp / ns, ns, **fast, **extra),
                        f"http://127.0.0.1:{port}/health", log)  # fmt: skip
            procs.append(api)
            time_503(port, 2)  # warm
            redis.stop()
            lat, statuses = time_503(port, args.broker_requests)
            lat.sort()
            lines.append(f"| Redis stopped | {label} | {len(lat)} | {lat[0]:.1f} | "
                         f"{lat[len(lat) // 2]:.1f} | {lat[-1]:.1f} | {json.dumps(statuses)} |")  # fmt: skip
            redis.start()
            stop(api)
            procs.remove(api)
    finally:
        for p in procs:
            stop(p)
        redis.stop()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
