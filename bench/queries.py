"""Query benchmark: dashboard and aggregation latency at two store sizes, cold vs warm cache.

    .venv/bin/python bench/queries.py [--sizes 10000,1000000] [--days 30] [--repeat 15]
        [--layout constant-rate|constant-span] [--client wsgi|testclient]

For each size it writes that many events straight into a fresh SQLite file (events,
aggregate counters and applied markers, computed with the same ``contribution`` the
worker uses, in bulk: far faster than going through the API), spread over the past
(``--layout``, below), then times requests through the real Falcon app in-process,
called the way a WSGI server calls it (an environ from ``falcon.testing.create_environ``,
the app, its body joined): no network and no test-client checks (``--client testclient``
goes through ``falcon.testing.TestClient``, which runs every request through
``wsgiref.validate``: that costs more than a warm answer), so the figures are the
service's own cost. Access logging is off (WARNING level), and so are keys and rate
limiting: fixed per-request costs that are not the query's.

* cold: the cache is invalidated (every day's version bumped) before each request, so
  every answer is computed from storage and written to Redis and the local level;
* warm: the same request repeated once: the answer the process holds, confirmed current
  by the day versions (read from Redis once here: the cold request's bump retired the
  versions the process held; a further repeat would not read them at all).

Layouts: ``constant-rate`` (default) keeps the traffic of the smallest store (its events
over ``--days`` days, 35 by default) and lets the history grow with the size, which is what "more stored
events" means for a running service: every window queried (all inside the last 35 days) holds
the same events at both sizes. ``constant-span`` packs every size into the same days, so
the windows themselves hold 100x the events (and the exact unique counts must read 100x
the members).

Prints a Markdown table with medians in ms, the large/small ratio of the cold medians,
and the cold/warm speedup. A private Redis is started and stopped by the script.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from dataclasses import dataclass
from urllib.parse import urlencode

from falcon import testing

from analytics.adapters import codec
from analytics.adapters.embedded_redis import RedisServerProcess
from analytics.adapters.sqlite_aggregates import SQLiteAggregateStore
from analytics.adapters.sqlite_store import (
    SQLiteDatabase,
    SQLiteEventRepository,
    to_us,
)
from analytics.bootstrap import bootstrap
from analytics.domain.aggregation import contribution
from analytics.domain.events import Event
from analytics.domain.ports import Cache
from analytics.entrypoints.api.app import create_app
from analytics.settings import Settings
from tests.support import free_port

WSGIApp = Callable[..., Iterable[bytes]]
TYPES = ("page_view",) * 6 + ("click",) * 3 + ("add_to_cart", "purchase")


def make_events(n: int, days: float, now: datetime, users: int, seed: int = 7) -> list[Event]:
    rnd = random.Random(seed)
    span = days * 86_400
    products = 1000
    out = []
    for _ in range(n):
        ts = now - timedelta(seconds=rnd.random() * span)
        et = rnd.choice(TYPES)
        user = rnd.randrange(users)
        price = Decimal(rnd.randrange(100, 20_000)) / 100 if et == "purchase" else None
        qty = rnd.randint(1, 3)
        out.append(
            Event(
                event_id=uuid.UUID(int=rnd.getrandbits(128)),
                event_type=et,
                user_id=f"user{user}",
                session_id=f"sess{user}-{int(ts.timestamp()) // 1800}",
                product_id=f"prod{int(rnd.paretovariate(1.2)) % products}"
                if et != "page_view" or rnd.random() < 0.5
                else None,
                metadata={"path": "/p"},
                timestamp=ts,
                received_at=ts,
                event_day=ts.strftime("%Y-%m-%d"),
                event_hour=ts.hour,
                price=price,
                quantity=qty,
                currency=rnd.choice(("EUR", "EUR", "USD")) if price is not None else None,
                total_value=price * qty if price is not None else None,
            )
        )
    return out


def load(db: SQLiteDatabase, events: list[Event], chunk: int = 50_000) -> None:
    """Events, counters and markers in bulk: what the worker would have written."""
    SQLiteAggregateStore(db)  # schema
    conn = db.connect()
    conn.execute("PRAGMA cache_size=-400000")  # 400 MB while loading only
    conn.execute("PRAGMA synchronous=OFF")
    events = sorted(events, key=lambda e: e.timestamp)
    for start in range(0, len(events), chunk):
        part = events[start : start + chunk]
        counters: dict[tuple[object, ...], int] = defaultdict(int)
        for e in part:
            for k, v in contribution(e).deltas.items():
                counters[k] += v
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO events (event_id, ts_us, event_type, user_id, session_id, product_id,"
            " received_us, body) VALUES (?,?,?,?,?,?,?,?)",
            [
                (str(e.event_id), to_us(e.timestamp), e.event_type, e.user_id, e.session_id,
                 e.product_id, to_us(e.received_at), codec.encode(e))
                for e in part
            ],
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO agg_applied (event_id, minute) VALUES (?, ?)",
            [(str(e.event_id), contribution(e).minute) for e in part],
        )
        conn.executemany(
            "INSERT INTO agg_counters (kind, grain, bucket, event_type, dim, dim2, value)"
            " VALUES (?,?,?,?,?,?,?) ON CONFLICT(kind, grain, bucket, event_type, dim, dim2)"
            " DO UPDATE SET value = value + excluded.value",
            [(*k, v) for k, v in counters.items()],
        )
        conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.execute("PRAGMA cache_size=-2000")  # back to the default for the measurements
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as a running service's WAL would be


def queries(now: datetime, days: int) -> dict[str, tuple[str, dict[str, str]]]:
    """Windows of at most ``days`` days, all inside the history of the smallest store."""
    day = now.date()
    agg = "/api/v1/analytics/aggregations"
    out = {
        "dashboard last=15m": ("/api/v1/analytics/dashboard/metrics", {"last": "15m"}),
        "dashboard last=1h": ("/api/v1/analytics/dashboard/metrics", {"last": "1h"}),
        "dashboard last=24h": ("/api/v1/analytics/dashboard/metrics", {"last": "24h"}),
        "dashboard last=7d": ("/api/v1/analytics/dashboard/metrics", {"last": "7d"}),
        "dashboard last=24h, 2nd page of history": (
            "/api/v1/analytics/dashboard/metrics",
            {
                "start": (now - timedelta(hours=48)).isoformat(),
                "end": (now - timedelta(hours=24)).isoformat(),
            },
        ),
        "hour x24 (UTC)": (
            f"{agg}/hour",
            {"start": (now - timedelta(hours=24)).isoformat(), "end": now.isoformat()},
        ),
        "day x30 (Europe/Berlin)": (
            f"{agg}/day",
            {"start": str(day - timedelta(days=30)), "end": str(day), "tz": "Europe/Berlin"},
        ),
        "week x4 (America/New_York)": (
            f"{agg}/week",
            {"start": str(day - timedelta(days=28)), "end": str(day), "tz": "America/New_York"},
        ),
        "month, this one (Asia/Kolkata)": (
            f"{agg}/month",
            {
                "start": str(day.replace(day=1)),
                "end": str(day + timedelta(days=1)),
                "tz": "Asia/Kolkata",
            },
        ),
    }
    if days < 35:  # keep every window inside the smallest store's history
        for name in list(out):
            if "day x" in name or "week" in name or "month" in name or "7d" in name:
                out.pop(name)
    return out


@dataclass
class Store:
    size: int
    app: WSGIApp
    cache: Cache
    days: list[str]


def setup(size: int, args: argparse.Namespace, redis: RedisServerProcess, work: Path, now: datetime) -> Store:  # fmt: skip
    data_dir = work / f"data-{size}"
    db = SQLiteDatabase(data_dir / "events.sqlite3")
    t = time.perf_counter()
    if args.layout == "constant-rate":
        # same traffic (the smallest store's rate), longer history: the windows queried
        # hold the same events whatever the size; only the stored history grows
        span = args.days * size / args.smallest
        users = args.users
    else:
        span, users = args.days, max(50, size // 20)  # same span, denser traffic
    load(db, make_events(size, span, now, users))
    print(f"# loaded {size:,} events in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    settings = Settings(
        storage="sqlite", data_dir=data_dir, broker="stub", cache_backend="redis",
        REDIS_HOST="127.0.0.1", REDIS_PORT=redis.port, namespace=f"bench-{size}",
        log_level="WARNING", auth="disabled", rate_limit="disabled",  # query cost only
    )  # fmt: skip
    c = bootstrap(settings, event_repo=SQLiteEventRepository(db))
    assert c.cache is not None
    app: WSGIApp = create_app(c)
    if args.client == "testclient":  # the test client's checks on every request, as before
        app = testing.TestClient(app)  # type: ignore[assignment]
    get(app, "/api/v1/analytics/dashboard/metrics", {})  # connect, warm imports
    days = [(now.date() - timedelta(days=d)).isoformat() for d in range(args.days + 3)]
    return Store(size, app, c.cache, days)


def get(app: WSGIApp, path: str, params: dict[str, str] | str) -> tuple[str, bytes]:
    """One GET as a WSGI server makes it: status line and body. ``params`` may come
    encoded already (the client's work, kept out of the timings)."""
    query = params if isinstance(params, str) else urlencode(params)
    if isinstance(app, testing.TestClient):  # --client testclient
        r = app.simulate_get(path, query_string=query)
        return r.status, r.content
    env = testing.create_environ(path=path, query_string=query)
    status: list[str] = []
    body = b"".join(app(env, lambda s, h, exc_info=None: status.append(s)))
    return status[0], body


def time_query(store: Store, path: str, params: dict[str, str]) -> tuple[float, float]:
    query = urlencode(params)  # the client's work
    store.cache.bump(store.days)  # every cached answer is retired: the next one is computed
    t = time.perf_counter()
    status, body = get(store.app, path, query)
    cold = time.perf_counter() - t
    assert status.startswith("200"), body
    t = time.perf_counter()
    status, again = get(store.app, path, query)
    warm = time.perf_counter() - t
    assert status.startswith("200"), again
    return cold, warm


def measure(stores: list[Store], args: argparse.Namespace, now: datetime) -> dict[int, dict[str, tuple[float, float]]]:  # fmt: skip
    """Sizes interleaved request by request, so load from elsewhere hits both alike."""
    out: dict[int, dict[str, tuple[float, float]]] = {s.size: {} for s in stores}
    for name, (path, params) in queries(now, args.days).items():
        samples: dict[int, list[tuple[float, float]]] = {s.size: [] for s in stores}
        for _ in range(args.repeat):
            for store in stores:
                samples[store.size].append(time_query(store, path, params))
        for size, got in samples.items():
            out[size][name] = (
                statistics.median(c for c, _ in got) * 1000,
                statistics.median(w for _, w in got) * 1000,
            )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,1000000")
    ap.add_argument("--days", type=int, default=35, help="history of the smallest store")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--users", type=int, default=2000, help="active users (constant-rate)")
    ap.add_argument(
        "--layout",
        choices=("constant-rate", "constant-span"),
        default="constant-rate",
        help="constant-rate: more events = longer history at the same traffic (default); "
        "constant-span: more events = denser traffic over the same --days",
    )
    ap.add_argument(
        "--client",
        choices=("wsgi", "testclient"),
        default="wsgi",
        help="wsgi: call the app as a WSGI server does (default); testclient: through "
        "falcon.testing.TestClient (adds wsgiref validation to every request)",
    )
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    args.smallest = min(sizes)
    import logging

    from analytics.entrypoints.logs import configure_logging

    logging.disable(logging.INFO)
    configure_logging("WARNING", "json")  # no access log line per request in the timings
    with tempfile.TemporaryDirectory(prefix="bench-queries-") as tmp:
        work = Path(tmp)
        redis = RedisServerProcess(work / "redis", port=free_port()).start()
        try:
            now = datetime.now(UTC)
            stores = [setup(size, args, redis, work, now) for size in sizes]
            results = measure(stores, args, now)
        finally:
            redis.stop()
    small, large = sizes[0], sizes[-1]
    print(f"layout={args.layout} days={args.days} repeat={args.repeat} client={args.client}")
    print(f"| query | cold {small:,} ms | cold {large:,} ms | large/small | "
          f"warm {large:,} ms | cold/warm |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for name in results[small]:
        cs, _ = results[small][name]
        cl, wl = results[large][name]
        print(f"| {name} | {cs:.2f} | {cl:.2f} | {cl / cs:.2f}x | {wl:.2f} | {cl / wl:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
