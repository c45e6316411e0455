"""Ingest benchmark: the service against the bare Falcon ceiling, in the same run.

    .venv/bin/python bench/ingest.py [--seconds 8] [--processes 2] [--threads 16]
    .venv/bin/python bench/ingest.py --drain-only [--rounds 1]   # single-event ingest + worker


Starts its own private Redis (append-only, fsynced once a second; a second one fsyncing
before every answer, the service's default for its embedded Redis, for one more
single-event phase), the bare Falcon baseline, the seed's stack shape (Flask +
pydantic + Celery, bench/seed_stack.py) and ``analytics api`` (same gunicorn settings),
drives each with the same load generator, then starts a worker and times how long it takes
to store the events one phase ingested, ``--worker-rounds`` times (``--drain-only``: only the single-event phase with
group commit, as the reference rate, and the worker phase). Prints a Markdown table of events/s, p50/p95/p99
latency and ratios to the ceiling and to the seed stack. The batch phase has the issue's two
references beside it, measured in the same round: the bare endpoint decoding the same batch
bodies ("decoding alone") and one plain Dramatiq ``send()`` per batch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from analytics.adapters.embedded_redis import RedisServerProcess  # noqa: E402
from analytics.adapters.sqlite_store import SQLiteDatabase, SQLiteEventRepository  # noqa: E402
from analytics.settings import Settings  # noqa: E402
from bench.loadgen import Result, run  # noqa: E402
from tests.support import free_port, wait_http  # noqa: E402


def event(i: int) -> dict[str, object]:
    return {
        "event_type": ("page_view", "click", "purchase")[i % 3],
        "user_id": f"user{i % 5000}", "session_id": f"sess{i % 20000}",
        "product_id": f"prod{i % 100}", "price": "19.99", "currency": "EUR", "quantity": 1 + i % 3,
        "metadata": {"path": "/products/42", "ref": "bench"}, "event_id": str(uuid.uuid4()),
    }  # fmt: skip


def single_body(i: int) -> bytes:
    return json.dumps(event(i)).encode()


def batch_body_factory(size: int, templates: int = 64):  # type: ignore[no-untyped-def]
    """Batch bodies of ``size`` events each, every event with a fresh ``event_id``.

    The load generator runs on the same cores as the service, so building each body with
    ``json.dumps`` and ``uuid4`` (about 1 ms of client CPU per request of 100) would be
    measured as if it were the service's cost. Instead ``templates`` bodies of ``event()``
    are encoded once, before timing; a request picks one and only the ids are filled in:
    a random prefix per load-generator process, then the request number and the event's
    index, so ids are unique across requests, threads and processes.
    """
    marker = "00000000-0000-4000-8000-000000000000"
    pool = []
    for t in range(templates):
        events = [{**event(t * size + k), "event_id": marker} for k in range(size)]
        parts = json.dumps({"events": events}).encode().split(marker.encode())
        assert len(parts) == size + 1
        # id k = head + f"{k:04x}": body = parts[0] + head + head.join(k-suffix + parts[k+1])
        pool.append((parts[0], [f"{k:04x}".encode() + parts[k + 1] for k in range(size)]))
    prefix = {"pid": 0, "value": ""}

    def body(i: int) -> bytes:
        if prefix["pid"] != os.getpid():  # a fresh prefix in each forked client process
            r = uuid.uuid4().hex
            prefix.update(pid=os.getpid(), value=f"{r[:8]}-{r[8:12]}-4{r[13:16]}-8{r[17:20]}-")
        start, tails = pool[i % templates]
        head = f"{prefix['value']}{i & 0xFFFFFFFF:08x}".encode()
        return start + head + head.join(tails)

    return body


def settle_aof(client: redis.Redis, timeout: float = 60) -> None:
    """Rewrite Redis's append-only file now (the data set is empty between phases) and
    wait until no rewrite is running or scheduled."""
    client.flushall()
    deadline = time.monotonic() + timeout

    def settled() -> None:
        while time.monotonic() < deadline:
            info = client.info("persistence")
            if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
                return
            time.sleep(0.1)

    settled()  # a rewrite Redis started by itself (the batch phases grow the file fast)
    client.bgrewriteaof()
    settled()


def messages_key(namespace: str) -> str:
    """The Redis hash holding every message queued on ``high_priority`` and not yet acked
    (dramatiq's Redis broker layout): with no worker running, its size is the number of
    messages the API sent, so events over it is group commit's group size."""
    return f"{namespace}:high_priority.msgs"


def env_for(redis: RedisServerProcess, data_dir: Path, namespace: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANALYTICS_", "REDIS_"))}
    env.update(
        PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}", REDIS_HOST="127.0.0.1",
        REDIS_PORT=str(redis.port), ANALYTICS_NAMESPACE=namespace, ANALYTICS_DATA_DIR=str(data_dir),
        ANALYTICS_AUTH="disabled", ANALYTICS_LOG_LEVEL="WARNING", ANALYTICS_RATE_LIMIT="disabled",
        ANALYTICS_OVERLOAD_QUEUE_DEPTH="100000000",
        ANALYTICS_WORKER_METRICS_PORT="0",  # no exporter: 9191 may be taken on this host
    )  # fmt: skip
    env.update(extra)
    return env


# A gunicorn config file every server of this script loads: each worker process marks
# itself ready once its app is built. ``/health`` answers as soon as ONE worker is up, and
# a load generator that connects then may open all its keep-alive connections to that one
# worker, leaving the other idle for the whole phase (seen here: half the throughput in
# the first seconds of a freshly started API, at random).
READY_HOOK = """import os
def post_worker_init(worker):
    open(os.path.join(os.environ["BENCH_READY_DIR"], str(os.getpid())), "w").close()
"""


def ready_marker(tmp: Path, name: str) -> tuple[dict[str, str], Path]:
    """Env (``ANALYTICS_GUNICORN_CONFIG``, ``BENCH_READY_DIR``) for one server, and the
    directory its workers mark themselves ready in."""
    hook = tmp / "ready_hook.py"
    if not hook.exists():
        hook.write_text(READY_HOOK)
    ready = tmp / f"ready-{name}-{uuid.uuid4().hex[:6]}"
    ready.mkdir()
    return {"ANALYTICS_GUNICORN_CONFIG": str(hook), "BENCH_READY_DIR": str(ready)}, ready


def start(cmd: list[str], env: dict[str, str], url: str, log: Path,
          ready: tuple[Path, int] | None = None) -> subprocess.Popen[bytes]:  # fmt: skip
    """Start a server; return once ``url`` answers and, with ``ready`` (the directory of
    :func:`ready_marker` and the worker count), once every worker has built its app."""
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)  # noqa: S603
    STARTED.append(proc)
    wait_http(url, timeout=60, proc=proc)
    if ready is not None:
        folder, workers = ready
        deadline = time.monotonic() + 60
        while len(list(folder.iterdir())) < workers:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[:3]}: {workers} workers not ready; see {log}")
            time.sleep(0.02)
    return proc


#: Every server and worker this run started: stopped at the end, whatever happened.
STARTED: list[subprocess.Popen[bytes]] = []


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def row(
    name: str, r: Result, base: float | None, unit: str = "events/s", seed: float | None = None
) -> str:
    ratio = f"{r.rate() / base:.0%}" if base else "100%"
    vs_seed = f"{r.rate() / seed:.1f}x" if seed else "n/a"
    errors = {s: n for s, n in r.statuses.items() if not 200 <= s < 300}
    return (f"| {name} | {r.rate():,.0f} {unit} | {r.pct(50):.1f} | {r.pct(95):.1f} | "
            f"{r.pct(99):.1f} | {ratio} | {vs_seed} | {errors or ''} |")  # fmt: skip


@dataclass
class Drain:
    queued: int  # events accepted (202) in the ingest phase
    messages: int
    t_ingest: float
    t_drain: float  # from the worker's spawn to the last event stored
    t_first: float  # from the spawn to the first event stored: the worker's start-up
    first: int  # events stored at t_first

    def after_first_rate(self) -> float:
        return (self.queued - self.first) / max(self.t_drain - self.t_first, 1e-9)


def drain(redis: RedisServerProcess, tmp: Path, log: Path, args: argparse.Namespace,
          gun: dict[str, str], workers: int, rate: float) -> Drain:  # fmt: skip
    """Ingest ``--drain-events`` single events with no worker running, then time a
    worker from its spawn until every accepted event is in the SQLite store."""
    # First let Redis compact its append-only file: the batch phases wrote hundreds of
    # MB to it, and an automatic rewrite (a fork) would otherwise land in this phase.
    settle_aof(redis.client())
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    port = free_port()
    hook, ready = ready_marker(tmp, ns)
    env = env_for(redis, tmp / ns, ns, **gun, **hook)
    api = start([sys.executable, "-m", "analytics", "api", "--port", str(port)], env,
                f"http://127.0.0.1:{port}/health", log, (ready, workers))  # fmt: skip
    from bench.loadgen import run as _run  # noqa: PLC0415

    t0 = time.perf_counter()
    ingest = _run(f"http://127.0.0.1:{port}/api/v1/analytics/events", single_body,
                  seconds=max(1.0, args.drain_events / max(rate, 1)), processes=args.processes,
                  threads=args.threads)  # fmt: skip
    t_ingest = time.perf_counter() - t0
    stop(api)
    queued = ingest.ok
    messages = redis.client().hlen(messages_key(ns))
    repo = SQLiteEventRepository(SQLiteDatabase(tmp / ns / "events.sqlite3"))
    t0 = time.perf_counter()  # from the spawn: the worker's start-up is part of the figure
    worker = subprocess.Popen([sys.executable, "-m", "analytics", "worker", "--queues", "high_priority",
                               "--processes", str(args.worker_processes), "--threads", str(args.worker_threads)], env=env,
                              stdout=log.open("ab"), stderr=subprocess.STDOUT)  # fmt: skip
    STARTED.append(worker)
    t_first, first = None, 0  # the worker's first stored event: its start-up is over
    while (count := repo.count()) < queued:
        if t_first is None and count:
            t_first, first = time.perf_counter() - t0, count
        if time.perf_counter() - t0 > 300 or worker.poll() is not None:
            raise RuntimeError(f"the worker stored {count} of {queued} events (exit {worker.poll()});"
                               f" see {log}")  # fmt: skip
        time.sleep(0.02)
    t_drain = time.perf_counter() - t0
    stop(worker)
    return Drain(queued, messages, t_ingest, t_drain, t_first if t_first is not None else 0.0, first)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="ceiling/service rounds, median shown")
    ap.add_argument("--processes", type=int, default=2, help="load generator processes")
    ap.add_argument("--threads", type=int, default=16, help="connections per process")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--web-workers", default="2")
    ap.add_argument("--web-threads", default="16")
    ap.add_argument("--drain-events", type=int, default=10_000)
    ap.add_argument("--worker-rounds", type=lambda v: max(1, int(v)), default=3,
                    help="worker drains (at least 1), median shown")
    ap.add_argument("--worker-processes", type=int, default=2)
    ap.add_argument("--worker-threads", type=int, default=Settings.model_fields["worker_threads"].default,
                    help="default: the service's own (ANALYTICS_WORKER_THREADS)")
    ap.add_argument("--drain-only", action="store_true",
                    help="only the single-event phase (group commit) and the worker phase")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="analytics-bench-"))
    log = tmp / "bench.log"
    # The benchmark's Redis: append-only file, fsynced once a second (a 202 survives a
    # crash of Redis's process, not a power cut), as a stock Redis with AOF runs for the
    # issue's references. The service's own default for the embedded Redis, and the
    # compose file's, fsync before every answer (ANALYTICS_REDIS_APPENDFSYNC=always): its
    # single-event phase runs against a second Redis configured so.
    redis = RedisServerProcess(tmp / "redis", port=free_port()).start()
    fsynced = None if args.drain_only else RedisServerProcess(
        tmp / "redis-always", port=free_port(), appendfsync="always").start()
    gun = {"ANALYTICS_WEB_WORKERS": args.web_workers, "ANALYTICS_WEB_THREADS": args.web_threads}
    load = {"seconds": args.seconds, "processes": args.processes, "threads": args.threads}
    lines = [
        f"load: {args.processes} client processes x {args.threads} connections, {args.seconds:g}s "
        f"per phase; gunicorn gthread {args.web_workers} workers x {args.web_threads} threads; "
        f"{os.cpu_count()} CPUs",
        "",
        "| phase | throughput | p50 ms | p95 ms | p99 ms | vs ceiling | vs seed stack | non-2xx |",
        "|---|---|---|---|---|---|---|---|",
    ]
    only = args.drain_only
    try:
        port = free_port()
        workers = int(args.web_workers)
        hook, ready = ready_marker(tmp, "base")
        env = env_for(redis, tmp / "base", "bench-base", **gun)
        baseline = start([sys.executable, str(ROOT / "bench" / "baseline_app.py"), str(port),
                          f"BASELINE_BROKER_URL=redis://127.0.0.1:{redis.port}/2",
                          f"ANALYTICS_GUNICORN_CONFIG={hook['ANALYTICS_GUNICORN_CONFIG']}",
                          *[f"{k}={v}" for k, v in gun.items()]],
                         {**env, "BENCH_READY_DIR": hook["BENCH_READY_DIR"]},
                         f"http://127.0.0.1:{port}/ingest", log, (ready, workers))  # fmt: skip
        base_url = f"http://127.0.0.1:{port}/ingest"
        send_url = f"http://127.0.0.1:{port}/send"

        # The seed's stack shape: Flask + pydantic + one Celery send_task per request.
        port = free_port()
        hook, ready = ready_marker(tmp, "seed")
        seed_cmd = [sys.executable, str(ROOT / "bench" / "seed_stack.py"), str(port),
                    f"redis://127.0.0.1:{redis.port}/1",
                    f"ANALYTICS_GUNICORN_CONFIG={hook['ANALYTICS_GUNICORN_CONFIG']}",
                    *[f"{k}={v}" for k, v in gun.items()]]  # fmt: skip
        seed = None
        if not only:
            seed_app = start(seed_cmd, {**env, "BENCH_READY_DIR": hook["BENCH_READY_DIR"]},
                             f"http://127.0.0.1:{port}/health", log, (ready, workers))  # fmt: skip
            seed = run(f"http://127.0.0.1:{port}/api/v1/analytics/events", single_body, **load)
            stop(seed_app)
            redis.client().flushall()  # our private server: drop the Celery backlog

        apis = {}
        servers = {}  # mode -> its Redis
        modes = [("group commit", {}, redis)]
        if not only:
            modes += [("group commit, fsync always", {}, fsynced),
                      ("one send() per request", {"ANALYTICS_GROUP_COMMIT": "false"}, redis)]  # fmt: skip
        for mode, extra, server in modes:
            port, ns = free_port(), f"bench-{uuid.uuid4().hex[:6]}"
            hook, ready = ready_marker(tmp, ns)
            servers[mode] = server
            apis[mode] = start([sys.executable, "-m", "analytics", "api", "--port", str(port)],
                               env_for(server, tmp / ns, ns, **gun, **extra, **hook),
                               f"http://127.0.0.1:{port}/health", log, (ready, workers)), \
                f"http://127.0.0.1:{port}/api/v1/analytics/events"  # fmt: skip

        # Rounds: the ceiling and each phase back to back, so every ratio compares two runs
        # a few seconds apart on this shared machine; the table shows the median round.
        rounds: list[dict[str, Result]] = []
        for _ in range(args.rounds):
            # The last round's batch phases left hundreds of MB of append-only file for the
            # kernel to write back: done before this round, not during its fsyncing phase.
            settle_aof(redis.client())
            os.sync()
            r = {"ceiling": run(base_url, single_body, **load)}
            for mode, (_, url) in apis.items():
                r[mode] = run(url, single_body, **load)
                servers[mode].client().flushall()  # our private server: drop this backlog
            if only:
                rounds.append(r)
                continue
            url = apis["group commit"][1]
            batches = batch_body_factory(args.batch_size)
            r["batch"] = run(f"{url}/batch", batches, items_per_request=args.batch_size, **load)
            redis.client().flushall()
            # The two batch references, in the same round: decoding alone, and
            # one plain Dramatiq send() per batch (bench/baseline_app.py).
            r["batch: decode only"] = run(base_url, batches, items_per_request=args.batch_size, **load)
            r["batch: plain send()"] = run(send_url, batches, items_per_request=args.batch_size, **load)
            redis.client().flushall()
            rounds.append(r)
        for proc, _ in apis.values():
            stop(proc)
        stop(baseline)

        def ratio(r: dict[str, Result], mode: str) -> float:
            return r[mode].rate() / r["ceiling"].rate()

        median = sorted(rounds, key=lambda r: ratio(r, "group commit"))[len(rounds) // 2]
        base = median["ceiling"]
        results = {mode: median[mode] for mode in apis}
        lines.append(row("bare Falcon + gunicorn (ceiling)", base, None, "req/s"))
        seed_rate = seed.rate() if seed is not None else None
        if seed is not None:
            lines.append(row("seed stack: Flask + pydantic + Celery, single event", seed, base.rate(),
                             seed=seed_rate))  # fmt: skip
        lines.append(row("single event, group commit", results["group commit"], base.rate(), seed=seed_rate))
        if not only:
            lines.append(row(f"batch of {args.batch_size}", median["batch"], base.rate(), seed=seed_rate))
            for ref in ("batch: decode only", "batch: plain send()"):
                lines.append(row(f"reference, {ref} ({args.batch_size} events, bare Falcon)",
                                 median[ref], base.rate(), seed=seed_rate))  # fmt: skip
            lines.append(row("single event, one send() per request", results["one send() per request"],
                             base.rate(), seed=seed_rate))  # fmt: skip
            lines.append(row("single event, group commit, Redis fsync always",
                             results["group commit, fsync always"], base.rate(), seed=seed_rate))  # fmt: skip
        per_round = ", ".join(f"{ratio(r, 'group commit'):.0%}" for r in rounds)
        if not only:
            per_round += "; with Redis fsyncing before every answer: " + ", ".join(
                f"{ratio(r, 'group commit, fsync always'):.0%}" for r in rounds)
        batches = "" if only else (
            f" Batch of {args.batch_size}, events/s per round: "
            + ", ".join(f"{r['batch'].rate():,.0f}" for r in rounds)
            + "; as a share of the same round's plain send() per batch: "
            + ", ".join(f"{r['batch'].rate() / r['batch: plain send()'].rate():.0%}" for r in rounds)
            + "."
        )
        lines += [
            "",
            f"rounds: {args.rounds} (ceiling, then each phase, back to back); the table is the "
            f"median round by the single-event ratio. Single event, group commit, vs ceiling "
            f"per round: {per_round}.{batches}",
        ]

        # Worker throughput: ingest N single events with no worker, then time the drain,
        # --worker-rounds times (one drain is a single sample on a noisy machine).
        drains = [drain(redis, tmp, log, args, gun, workers, results["group commit"].rate())
                  for _ in range(args.worker_rounds)]  # fmt: skip
        lines += [
            "",
            "vs ceiling / vs seed stack: events/s over the ceiling's requests/s and over the seed "
            "stack's events/s (one event per request), all measured in this run.",
            "",
        ]
        for i, d in enumerate(drains):
            lines.append(
                f"worker, drain {i + 1}: {d.queued:,} events ingested one per request in "
                f"{d.t_ingest:.2f}s ({d.messages:,} messages); a {args.worker_processes}x"
                f"{args.worker_threads} worker stored them in {d.t_drain:.2f}s "
                f"({d.queued / d.t_drain:,.0f} events/s, {d.t_drain / d.t_ingest:.0%} of the ingest "
                f"time, start-up included); from its first stored event on: "
                f"{d.queued - d.first:,} events in {d.t_drain - d.t_first:.2f}s "
                f"({d.after_first_rate():,.0f} events/s, {(d.t_drain - d.t_first) / d.t_ingest:.0%} "
                f"of the ingest time)"
            )
        d = sorted(drains, key=lambda d: d.t_drain / d.t_ingest)[len(drains) // 2]
        rate = results["group commit"].rate()
        lines += [
            "",
            f"worker, the median drain ({d.t_drain / d.t_ingest:.0%} of its ingest time) projected on the median round's "
            f"single-event ingest ({rate:,.0f} events/s): {args.drain_events:,} events take "
            f"{args.drain_events / rate:.2f}s to ingest and "
            f"{d.t_first + args.drain_events / max(d.after_first_rate(), 1e-9):.2f}s to store, "
            f"start-up included",
        ]
    except BaseException:
        print(f"bench failed; its servers' output is in {log}", file=sys.stderr)
        raise
    finally:
        for proc in STARTED:  # a failed phase left its servers running before
            if proc.poll() is None:
                stop(proc)
        redis.stop()
        if fsynced is not None:
            fsynced.stop()
    shutil.rmtree(tmp, ignore_errors=True)  # kept, with its log, only when the run failed
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
