"""The ingest path in one process, without HTTP: CPU per event, and where it goes.

    .venv/bin/python bench/ingest_profile.py [--requests 2000] [--batch-size 100] [--profile]
    .venv/bin/python bench/ingest_profile.py --single [--env ANALYTICS_BROKER=stub]
    .venv/bin/python bench/ingest_profile.py --single --threads 16   # group commit's groups

Builds the API exactly as a gunicorn worker does (``build_wsgi_app`` with the benchmark's
settings, a private Redis, the prometheus multiprocess directory) and calls the WSGI app
directly with ``bench/ingest.py``'s batch bodies (built before timing), one request after
another, or from ``--threads`` callers at once (then concurrent single events share
group-commit messages: events/message is the group size). No socket, no gunicorn, no
client in the figure: what is left is the app's own CPU per event, stable enough to
compare two builds (``--profile`` adds a cProfile listing by total time).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from analytics.adapters.embedded_redis import RedisServerProcess  # noqa: E402
from bench.ingest import batch_body_factory, env_for, messages_key, single_body  # noqa: E402
from tests.support import free_port  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--single", action="store_true", help="POST one event per request")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="callers at once (as gunicorn's threads): group commit's own cost")
    ap.add_argument("--profile", action="store_true", help="cProfile one more run")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--callers", metavar="REGEX",
                    help="with --profile: who calls the functions matching REGEX")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra settings, e.g. ANALYTICS_BROKER=stub (no Redis round trip)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="analytics-bench-profile-"))
    redis = RedisServerProcess(tmp / "redis", port=free_port()).start()
    try:
        env = env_for(redis, tmp / "data", "bench-profile", **dict(kv.split("=", 1) for kv in args.env))
        os.environ.clear()
        os.environ.update(env)
        from analytics.entrypoints.metrics_dir import prepare_multiproc_dir  # noqa: PLC0415
        from analytics.entrypoints.wsgi import build_wsgi_app  # noqa: PLC0415
        from analytics.settings import Settings  # noqa: PLC0415

        settings = Settings.from_env(os.environ)
        mp_dir = prepare_multiproc_dir(tmp / "metrics")
        settings = settings.model_copy(update={"prometheus_multiproc_dir": mp_dir})
        app = build_wsgi_app(settings)
        body = single_body if args.single else batch_body_factory(args.batch_size)
        path = "/api/v1/analytics/events" if args.single else "/api/v1/analytics/events/batch"
        per_request = 1 if args.single else args.batch_size
        statuses: dict[str, int] = {}

        def start_response(status: str, headers: list[tuple[str, str]]) -> None:
            statuses[status] = statuses.get(status, 0) + 1

        total = 200 + args.requests * (args.repeat + (1 if args.profile else 0))
        bodies = [body(i) for i in range(total)]  # before timing: the client is not measured

        def call(i: int) -> None:
            data = bodies[i]
            environ = {
                "REQUEST_METHOD": "POST",
                "PATH_INFO": path,
                "QUERY_STRING": "",
                "SERVER_NAME": "127.0.0.1",
                "SERVER_PORT": "8083",
                "SERVER_PROTOCOL": "HTTP/1.1",
                "REMOTE_ADDR": "127.0.0.1",
                "CONTENT_TYPE": "application/json",
                "CONTENT_LENGTH": str(len(data)),
                "HTTP_HOST": "127.0.0.1:8083",
                "wsgi.input": io.BytesIO(data),
                "wsgi.errors": sys.stderr,
                "wsgi.url_scheme": "http",
                "wsgi.version": (1, 0),
                "wsgi.multithread": True,
                "wsgi.multiprocess": True,
                "wsgi.run_once": False,
            }
            for chunk in app(environ, start_response):
                del chunk

        n = 0
        for i in range(200):  # warm-up
            call(n)
            n += 1
        client = redis.client()
        messages = messages_key(env["ANALYTICS_NAMESPACE"])
        for r in range(args.repeat):
            m0 = client.hlen(messages)
            t0, c0 = time.perf_counter(), time.process_time()
            run_calls(call, range(n, n + args.requests), args.threads)
            n += args.requests
            t1, c1 = time.perf_counter(), time.process_time()
            events = args.requests * per_request
            groups = client.hlen(messages) - m0
            print(f"run {r + 1}: {(c1 - c0) / events * 1e6:.2f} us CPU/event, "
                  f"{(t1 - t0) / events * 1e6:.2f} us wall/event, "
                  f"{events / groups if groups else float('nan'):.1f} events/message, {statuses}")  # fmt: skip
        if args.profile:
            import cProfile  # noqa: PLC0415
            import pstats  # noqa: PLC0415

            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.requests):
                call(n)
                n += 1
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)
            if args.callers:
                pstats.Stats(prof).print_callers(args.callers)
    finally:
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def run_calls(call: Callable[[int], None], numbers: range, threads: int) -> None:
    """``call`` for each number, from ``threads`` threads at once (each a share)."""
    if threads <= 1:
        for i in numbers:
            call(i)
        return
    shares = [numbers[k::threads] for k in range(threads)]
    workers = [threading.Thread(target=lambda s=s: [call(i) for i in s]) for s in shares]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


if __name__ == "__main__":
    raise SystemExit(main())
