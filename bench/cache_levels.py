"""Cache levels benchmark: a repeated closed-bucket request from the in-process level vs
from Redis, in the same run.

    /work/venv/bin/python bench/cache_levels.py [--events 5000] [--repeat 200]

A private Redis and a fresh SQLite store with ``--events`` events spread over the past 30
days (counted by the worker's own use case). Two apps over the same store and Redis:

* redis: ``local_cache_entries=0``: every repeated request is answered by the Redis
  level (one ``lookup`` round trip: versions and values);
* local: the in-process LRU in front: the repeated request reads the day versions from
  Redis (one small round trip, so a reconcile or late event is never missed) and the
  bucket values from memory.

Requests go through the real Falcon app in-process (``falcon.testing``). Each shape is
warmed, then timed ``--repeat`` times, alternating the two apps so machine noise hits
both alike. Prints medians in ms and the redis/local ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from falcon import testing  # noqa: E402

from analytics.adapters.embedded_redis import RedisServerProcess  # noqa: E402
from analytics.application.store_events import store_events  # noqa: E402
from analytics.bootstrap import bootstrap  # noqa: E402
from analytics.entrypoints.api.app import create_app  # noqa: E402
from analytics.settings import Settings  # noqa: E402
from tests.aggsupport import make_event  # noqa: E402
from tests.support import free_port  # noqa: E402

AGG = "/api/v1/analytics/aggregations"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()

    from analytics.entrypoints.logs import configure_logging  # noqa: PLC0415

    configure_logging("WARNING", "json")  # no access log line per request in the timings
    tmp = Path(tempfile.mkdtemp(prefix="analytics-cache-levels-"))
    redis = RedisServerProcess(tmp / "redis", port=free_port()).start()
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    try:
        base = {
            "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis.port),
            "ANALYTICS_DATA_DIR": str(tmp / "data"), "ANALYTICS_BROKER": "stub",
            "ANALYTICS_CACHE_BACKEND": "redis", "ANALYTICS_AUTH": "disabled",
            "ANALYTICS_NAMESPACE": "levels", "ANALYTICS_LOG_LEVEL": "WARNING",
        }  # fmt: skip
        apps = {}
        for name, entries in (("redis", "0"), ("local", "4096")):
            c = bootstrap(Settings.from_env({**base, "ANALYTICS_LOCAL_CACHE_ENTRIES": entries}))
            apps[name] = (c, testing.TestClient(create_app(c)))
        writer = apps["redis"][0]
        events = [
            make_event(now - timedelta(days=30) + timedelta(seconds=i * 30 * 86_400 / args.events),
                       user=f"u{i % 300}", session=f"s{i % 900}")
            for i in range(args.events)
        ]  # fmt: skip
        for k in range(0, len(events), 500):
            store_events(events[k : k + 500], repo=writer.event_repo,
                         aggregates=writer.aggregates, cache=writer.cache)  # fmt: skip
        closed_end = (now - timedelta(days=1)).date().isoformat()
        shapes = {
            "day x 28 (closed)": (f"{AGG}/day", {"start": (now - timedelta(days=29)).date().isoformat(), "end": closed_end}),
            "hour x 168 (closed)": (f"{AGG}/hour", {"start": (now - timedelta(days=8)).date().isoformat(), "end": (now - timedelta(days=1)).date().isoformat()}),
        }  # fmt: skip
        lines = [
            (f"{args.events:,} events over 30 days; {args.repeat} repeated requests per shape "
             "and level, in-process Falcon app, private Redis on loopback"),
            "",
            "| request | from Redis (median ms) | from the in-process level (median ms) | speedup |",
            "|---|---|---|---|",
        ]
        for label, (path, params) in shapes.items():
            bodies = set()
            for _, client in apps.values():  # warm: computed once, then cached in both levels
                for _ in range(3):
                    r = client.simulate_get(path, params=params)
                    assert r.status_code == 200, r.text
                    bodies.add(r.content)
            assert len(bodies) == 1, "both levels must answer the same document"
            times: dict[str, list[float]] = {"redis": [], "local": []}
            for _ in range(args.repeat):
                for name, (_, client) in apps.items():
                    t0 = time.perf_counter()
                    client.simulate_get(path, params=params)
                    times[name].append((time.perf_counter() - t0) * 1000)
            red, loc = statistics.median(times["redis"]), statistics.median(times["local"])
            lines.append(f"| {label} | {red:.3f} | {loc:.3f} | {red / loc:.1f}x |")
        stats = apps["local"][0].cache.stats()
        lines += ["", f"local app's cache: {stats}"]
    finally:
        redis.stop()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
