"""CPU per accepted event, by process: the API, its Redis and the load generator.

    .venv/bin/python bench/ingest_cpu.py [--mode batch|single|ceiling] [--seconds 5] [--repeat 3]

Events/s on a shared 2-core machine say as much about the neighbours as about the code;
the CPU each process spends per accepted event does not depend (much) on who else runs.
Starts a private Redis and ``analytics api`` with the benchmark's gunicorn settings, drives
it with ``bench/loadgen.py`` (batch bodies from ``bench/ingest.py``), and reads the
processes' user+system CPU times before and after each run (for the API also its kernel
part alone), and the API threads' voluntary
context switches (sleeps: each ends in a wake-up that costs tens of microseconds of CPU on
these VMs, see README "Performance"). ``projected`` is what the
whole stack (API + Redis + client) would do with both cores to itself: 2 s of CPU per
second over the CPU per event.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import psutil  # noqa: E402

from analytics.adapters.embedded_redis import RedisServerProcess  # noqa: E402
from bench.ingest import (  # noqa: E402
    batch_body_factory,
    env_for,
    messages_key,
    ready_marker,
    single_body,
    start,
    stop,
)
from bench.loadgen import run  # noqa: E402
from tests.support import free_port  # noqa: E402


def cpu_seconds(procs: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def kernel_seconds(procs: list[psutil.Process]) -> float:
    """The system (kernel) part of :func:`cpu_seconds`: syscalls, wake-ups, page faults."""
    return sum(p.cpu_times().system for p in procs)


def switches(procs: list[psutil.Process]) -> int:
    """Voluntary context switches of every thread: each is a sleep, and the wake-up that
    ends it (a futex or a GIL hand-over) costs tens of microseconds on these VMs."""
    total = 0
    for p in procs:  # /proc/<pid>/status counts the main thread only
        for status in Path(f"/proc/{p.pid}/task").glob("*/status"):
            for line in status.read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the load generator's processes
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--mode", choices=("batch", "single", "ceiling"), default="batch",
        help="ceiling: the bare Falcon baseline of bench/ingest.py, single bodies",
    )
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--processes", type=int, default=2, help="load generator processes")
    ap.add_argument("--threads", type=int, default=16, help="connections per process")
    ap.add_argument("--web-workers", default="2")
    ap.add_argument("--web-threads", default="16")
    ap.add_argument("--appendfsync", choices=("everysec", "always"), default="everysec",
                    help="the private Redis's fsync policy (always: the service's embedded default)")
    ap.add_argument("--unix-socket", action="store_true",
                    help="the API reaches its Redis over a Unix socket, as `analytics serve`'s")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment for the API, e.g. ANALYTICS_GROUP_COMMIT=false")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="analytics-bench-cpu-"))
    sock = tmp / "redis.sock" if args.unix_socket else None
    redis = RedisServerProcess(tmp / "redis", port=free_port(), unix_socket=sock,
                               appendfsync=args.appendfsync).start()  # fmt: skip
    gun = {"ANALYTICS_WEB_WORKERS": args.web_workers, "ANALYTICS_WEB_THREADS": args.web_threads}
    batch = args.mode == "batch"
    per_request = args.batch_size if batch else 1
    body = batch_body_factory(args.batch_size) if batch else single_body
    load = {"processes": args.processes, "threads": args.threads, "items_per_request": per_request}
    print(f"{args.mode}{f' of {args.batch_size}' if batch else ''}: {args.processes} client processes "
          f"x {args.threads} connections, {args.seconds:g}s per run; gunicorn gthread "
          f"{args.web_workers} workers x {args.web_threads} threads; {os.cpu_count()} CPUs\n")  # fmt: skip
    print(
        "| run | events/s | API us/event | of which kernel | API switches/event | events/message "
        "| Redis us/event | client us/event | total | projected |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    try:
        port = free_port()
        # Every worker must be up before its CPU is read: the process list below is taken
        # once, and gunicorn forks its workers up to 0.1 s apart, so a light app (the
        # ceiling) answered before its second worker existed and half its CPU went uncounted.
        hook, ready = ready_marker(tmp, args.mode)
        extra = dict(kv.split("=", 1) for kv in args.env)
        env = env_for(redis, tmp / "data", "bench-cpu", **gun, **hook, **extra)
        if sock is not None:
            del env["REDIS_HOST"], env["REDIS_PORT"]
            env["REDIS_SOCKET"] = str(sock)
        workers = (ready, int(args.web_workers))
        if args.mode == "ceiling":  # same gunicorn settings, same load, no service behind
            cmd = [sys.executable, str(ROOT / "bench" / "baseline_app.py"), str(port),
                   f"ANALYTICS_GUNICORN_CONFIG={hook['ANALYTICS_GUNICORN_CONFIG']}",
                   *[f"{k}={v}" for k, v in gun.items()]]  # fmt: skip
            url = f"http://127.0.0.1:{port}/ingest"
            api = start(cmd, env, url, tmp / "bench.log", workers)
        else:
            api = start([sys.executable, "-m", "analytics", "api", "--port", str(port)], env,
                        f"http://127.0.0.1:{port}/health", tmp / "bench.log", workers)  # fmt: skip
            url = f"http://127.0.0.1:{port}/api/v1/analytics/events{'/batch' if batch else ''}"
        api_procs = [psutil.Process(api.pid), *psutil.Process(api.pid).children(recursive=True)]
        redis_procs = [psutil.Process(redis.proc.pid)]  # type: ignore[union-attr]
        client = redis.client()
        messages = messages_key(env["ANALYTICS_NAMESPACE"])  # no worker: what the API sent
        run(url, body, seconds=1, **load)  # warm-up: imports, connections, caches
        for i in range(args.repeat):
            a0, r0, c0 = cpu_seconds(api_procs), cpu_seconds(redis_procs), children_cpu()
            k0 = kernel_seconds(api_procs)
            s0, m0 = switches(api_procs), client.hlen(messages)
            result = run(url, body, seconds=args.seconds, **load)
            a1, r1, c1 = cpu_seconds(api_procs), cpu_seconds(redis_procs), children_cpu()
            k1 = kernel_seconds(api_procs)
            s1, m1 = switches(api_procs), client.hlen(messages)
            n = result.ok * per_request
            if not n:
                print(f"| {i + 1} | no 2xx answers: {dict(result.statuses)} |")
                continue
            per_message = f"{n / (m1 - m0):.1f}" if m1 > m0 else "n/a"  # n/a: the ceiling
            us = [(a1 - a0) / n * 1e6, (r1 - r0) / n * 1e6, (c1 - c0) / n * 1e6]
            errors = {s: k for s, k in result.statuses.items() if not 200 <= s < 300}
            print(f"| {i + 1} | {result.rate():,.0f} | {us[0]:.1f} | {(k1 - k0) / n * 1e6:.1f} | {(s1 - s0) / n:.2f} | {per_message} | {us[1]:.1f} | {us[2]:.1f} | "
                  f"{sum(us):.1f} | {2e6 / sum(us):,.0f} events/s |{f' non-2xx {errors}' if errors else ''}")  # fmt: skip
        stop(api)
    finally:
        redis.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
