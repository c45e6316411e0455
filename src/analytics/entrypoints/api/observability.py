"""The API's observability: request metrics, ``/metrics``, ``/health/detailed``, profiling.

:func:`install` wires all of it into an app built by ``create_app``; the profiling
middleware is added only when ``profile_slow_ms`` is set, so it costs nothing when off.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dramatiq
import falcon
import msgspec
import psutil
import structlog

from analytics.adapters.dramatiq_queue import QUEUES
from analytics.adapters.redis_probe import RedisProbe
from analytics.application.queries import check_params
from analytics.bootstrap import Container
from analytics.domain.events import Event
from analytics.domain.ports import TaskQueue
from analytics.entrypoints import metrics as m
from analytics.settings import Settings

_encode = msgspec.json.Encoder().encode
INGEST_ROUTES = frozenset(
    {"/api/v1/analytics/events", "/api/v1/analytics/events/batch", "/analytics/events"}
)


class MeteredTaskQueue:
    """TaskQueue decorator: counts accepted events by type and their revenue once queued."""

    def __init__(self, inner: TaskQueue, *, event_types: int = 100) -> None:
        self.inner = inner
        self.by_type = m.accepted_by_type(event_types)

    def enqueue_events(self, events: Sequence[Event]) -> str:
        task_id = self.inner.enqueue_events(events)
        m.record_accepted(events, self.by_type)
        return task_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class RequestMetricsMiddleware:
    """Count and time every request by route template (never the raw path).

    The labelled children are looked up once per (route, method, status) and kept: the
    label lookup costs more than the increment it leads to.
    """

    def __init__(self) -> None:
        self._children = m.LabelCache(
            lambda *key: (m.HTTP_REQUESTS.labels(*key), m.HTTP_DURATION.labels(*key))
        )

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.metrics_started = self.start()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        started = getattr(req.context, "metrics_started", None)
        if started is None:
            return
        route = req.uri_template or "unmatched"
        self.finish(route, req.method, str(resp.status_code), started)
        if route in INGEST_ROUTES and req.method == "POST":
            _count_ingest_outcome(req)

    @staticmethod
    def start() -> float:
        m.HTTP_IN_PROGRESS.inc()
        return time.perf_counter()

    @staticmethod
    def abandon() -> None:
        """A request started here that another handler will count."""
        m.HTTP_IN_PROGRESS.dec()

    def finish(self, route: str, method: str, status: str, started: float) -> None:
        m.HTTP_IN_PROGRESS.dec()
        if method not in _METHODS:  # any token is a method to HTTP: one label, not one each
            method = "other"
        requests, duration = self._children(route, method, status)
        requests.inc()
        duration.observe(time.perf_counter() - started)


#: The ``method`` label's values; any other method token (a client may send 150 made-up
#: ones, each a new time series on /metrics) counts as ``other``.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _count_ingest_outcome(req: falcon.Request) -> None:
    """Rejections and in-batch duplicates (accepted events are counted by the queue)."""
    rejections = getattr(req.context, "rejected_errors", None)
    if rejections is not None:
        m.record_rejected(rejections)
    receipt = getattr(req.context, "batch_receipt", None)
    if receipt is not None:
        m.record_duplicates("ingest", receipt.duplicates)
        for item in receipt.results:
            if item.status == "rejected":
                m.record_rejected(item.errors)


def read_queue_depths(
    broker: dramatiq.Broker, kind: str, probe: RedisProbe | None
) -> dict[str, int] | None:
    """Messages per queue, ``<q>.DQ`` (delayed) and ``<q>.XQ`` (dead letters), from the
    broker in use; None when it has no way to tell."""
    if kind == "redis":
        return probe.queue_depths(QUEUES) if probe is not None else None
    out: dict[str, int] = {}
    if kind == "rabbitmq":
        for q in QUEUES:
            ready, delayed, dead = broker.get_queue_message_counts(q)  # type: ignore[attr-defined]
            out.update({q: ready, f"{q}.DQ": delayed, f"{q}.XQ": dead})
        return out
    queues = getattr(broker, "queues", None)
    dead_letters = getattr(broker, "dead_letters_by_queue", {})
    if not isinstance(queues, dict):
        return None
    for q in QUEUES:
        out[q] = queues[q].qsize() if q in queues else 0
        out[f"{q}.DQ"] = queues[f"{q}.DQ"].qsize() if f"{q}.DQ" in queues else 0
        out[f"{q}.XQ"] = len(dead_letters.get(q, ()))
    return out


class MetricsResource:
    """``GET /metrics``: Prometheus exposition of every API process (multiprocess mode).

    A scrape costs tens of milliseconds of CPU (every process's files read, Redis asked
    for its queue depths) and an open ``/metrics`` is exempt from the anonymous rate limit
    (a scraper must never get 429): so each process renders at most once per ``fresh_s``
    and concurrent scrapes share that rendering. A flood of scrapes then costs what one a
    second does (security review: 33 ms of CPU each, unlimited); Prometheus scrapes every
    15 s or so and sees values at most a second old.
    """

    fresh_s = 1.0

    def __init__(self, container: Container, probe: RedisProbe | None) -> None:
        self.settings = container.settings
        self.broker = container.broker
        self.probe = probe
        self.multiproc_dir = self.settings.prometheus_multiproc_dir
        self._lock = threading.Lock()
        self._rendered: tuple[float, bytes] | None = None

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = m.CONTENT_TYPE
        with self._lock:
            now = time.monotonic()
            if self._rendered is None or now - self._rendered[0] >= self.fresh_s:
                self._rendered = (now, self._render())
            resp.data = self._rendered[1]

    def _render(self) -> bytes:
        m.sample_system(Path(self.settings.data_dir))
        m.sample_process("api")
        m.sync_caches()
        if self.probe is not None:
            try:
                self.probe.ping()
                m.record_redis_up(True)
            except Exception:  # noqa: BLE001 - a scrape answers even when Redis does not
                m.record_redis_up(False)
        try:
            depths = read_queue_depths(self.broker, self.settings.broker, self.probe)
            if depths is not None:
                m.record_queue_depths(depths)
        except Exception:  # noqa: BLE001
            m.QUEUE_DEPTH_ERRORS.inc()
        return m.render(self.multiproc_dir)


# --- health -------------------------------------------------------------------------------
_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="health")
# Redis and the broker decide ``down`` (503): their checks get threads of their own. A
# hung storage or SNS call holds its pool thread past the check's timeout (until the
# client's own timeout, tens of seconds with botocore's retries); three probes of a hung
# DynamoDB filled the shared pool, the Redis check then waited behind them and a healthy
# API answered 503 "down" (a QA pass: 5 of 10 probes).
_critical_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="health-critical")


def _run(
    check: Callable[[], dict[str, Any]], timeout_s: float, pool: ThreadPoolExecutor = _pool
) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        result = pool.submit(check).result(timeout=timeout_s)
    except FutureTimeout:
        result = {"status": "down", "error": f"no answer within {timeout_s}s"}
    except Exception as exc:  # noqa: BLE001 - a failing dependency is a result, not an error
        result = {"status": "down", "error": f"{type(exc).__name__}: {exc}"[:300]}
    result.setdefault("status", "ok")
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return result


def _unserved_queues(workers: object, queues: dict[str, Any]) -> list[str]:
    """``high_priority`` needs a live worker always (ingest's events wait there); another
    queue when messages wait on it: a deployment may run no worker for a queue it never
    uses, but aggregations queued with no worker alive would stay unapplied, unseen."""
    if not isinstance(workers, dict):
        return []
    if workers.get("status") == "unknown":  # the heartbeats could not be read
        return ["worker heartbeats unknown"]
    reasons = []
    for queue, worker in workers.items():
        if isinstance(worker, dict) and worker.get("status") == "ok":
            continue
        if queue == "high_priority":
            reasons.append("no live worker for high_priority")
            continue
        depth = queues.get(queue)
        waiting = depth.get("ready", 0) + depth.get("delayed", 0) if isinstance(depth, dict) else 0
        if waiting:
            reasons.append(f"no live worker for {queue} ({waiting} messages waiting)")
    return reasons


class DetailedHealthResource:
    """``GET /health/detailed``: readiness with each dependency, queues, workers, system.

    ``down`` (503) when events cannot be accepted (Redis/broker unreachable); ``degraded``
    (200) when something behind the queue is unhealthy (storage, SNS, stale worker
    heartbeat or scheduler, a queue over ``queue_depth_warn``); ``ok`` otherwise.
    """

    CRITICAL = ("redis", "broker")

    def __init__(
        self, container: Container, probe: RedisProbe | None, timeout_s: float = 2.0
    ) -> None:
        self.container = container
        self.settings = container.settings
        self.probe = probe
        self.timeout_s = timeout_s

    def checks(self) -> dict[str, Callable[[], dict[str, Any]]]:
        checks: dict[str, Callable[[], dict[str, Any]]] = {}
        if self.probe is not None:
            probe = self.probe
            checks["redis"] = lambda: {"ping_ms": round(probe.ping(), 2)}
        checks["broker"] = self._broker
        checks["storage"] = self._storage
        extra = self.container.extras.get("health_checks")
        if isinstance(extra, dict):
            checks.update(extra)
        sns = self._sns_check()
        if sns is not None:
            checks["sns"] = sns
        return checks

    def _broker(self) -> dict[str, Any]:
        broker = self.container.broker
        kind = self.settings.broker
        if kind == "redis":
            broker.client.ping()  # type: ignore[attr-defined]
        elif kind == "rabbitmq":
            broker.ping()  # type: ignore[attr-defined]
        return {"kind": kind, "queues": sorted(broker.get_declared_queues())}

    def _storage(self) -> dict[str, Any]:
        repo = self.container.event_repo
        return {"kind": self.settings.storage, "events": repo.count()}

    def _sns_check(self) -> Callable[[], dict[str, Any]] | None:
        notifier = getattr(self.container, "notifier", None) or self.container.extras.get(
            "notifier"
        )
        if notifier is not None and hasattr(notifier, "health"):
            return lambda: dict(notifier.health())
        client, topic = getattr(notifier, "client", None), getattr(notifier, "topic_arn", None)
        if client is not None and topic:
            # The notifier's own client: its endpoint, credentials and timeouts.
            return lambda: (client.get_topic_attributes(TopicArn=topic), {"topic_arn": topic})[1]
        arn = getattr(self.settings, "sns_topic_arn", None)
        if not arn:
            return None
        settings = self.settings

        def check() -> dict[str, Any]:
            import boto3  # noqa: PLC0415
            from botocore.config import Config  # noqa: PLC0415

            client = boto3.client(
                "sns",
                region_name=getattr(settings, "aws_region", None) or "us-east-1",
                endpoint_url=getattr(settings, "aws_endpoint_url", None) or None,
                config=Config(connect_timeout=1, read_timeout=1, retries={"max_attempts": 1}),
            )
            client.get_topic_attributes(TopicArn=arn)
            return {"topic_arn": arn}

        return check

    def _queues_and_workers(self, redis_ok: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"queues": None, "workers": None, "scheduler": None}
        now = time.time()
        try:
            depths = read_queue_depths(self.container.broker, self.settings.broker, self.probe)
            if depths is not None:
                m.record_queue_depths(depths)
                out["queues"] = {
                    q: {"ready": depths[q], "delayed": depths[f"{q}.DQ"], "dead": depths[f"{q}.XQ"]}
                    for q in QUEUES
                }
        except Exception as exc:  # noqa: BLE001
            out["queues"] = {"status": "unknown", "error": str(exc)[:200]}
        if self.probe is None or not redis_ok:
            return out
        try:
            beats = self.probe.heartbeats(QUEUES)
            out["workers"] = {
                q: (
                    {"status": "missing"}
                    if hb is None
                    else {
                        "status": "ok"
                        if now - hb.at <= self.settings.heartbeat_stale_s
                        else "stale",
                        "last_heartbeat": _iso(hb.at),
                        "age_s": round(now - hb.at, 1),
                        "pid": hb.pid,
                        "host": hb.host,
                    }
                )
                for q, hb in beats.items()
            }
        except Exception as exc:  # noqa: BLE001
            out["workers"] = {"status": "unknown", "error": str(exc)[:200]}
        try:
            last = self.probe.scheduler_last_run()
            out["scheduler"] = (
                {"status": "never_ran", "key": self.probe.scheduler_key}
                if last is None
                else {
                    "status": "ok" if now - last <= self.settings.scheduler_stale_s else "stale",
                    "last_run": _iso(last),
                    "age_s": round(now - last, 1),
                    "key": self.probe.scheduler_key,
                }
            )
            leader = out["scheduler"]["leader"] = self.probe.scheduler_leader()
            # None holds the lease, and none renewed it for longer than a failover takes (a
            # standby takes over within lease x 4/3 of the last renewal; one poll more of
            # slack): every scheduler stopped. Only "stale" after scheduler_stale_s (15 min)
            # said so, though the lease said it at once (ops QA). Measured from the last
            # renewal, not the last run, which is up to a minute old in a normal handover.
            seen = self.probe.scheduler_seen() if leader is None else None
            if seen is not None and now - seen > self.settings.scheduler_lease_s * 5 / 3:
                if out["scheduler"]["status"] == "ok":
                    out["scheduler"]["status"] = "no_leader"
        except Exception as exc:  # noqa: BLE001
            out["scheduler"] = {"status": "unknown", "error": str(exc)[:200]}
        return out

    def report(self) -> dict[str, Any]:
        checks = {
            name: _run(fn, self.timeout_s, _critical_pool if name in self.CRITICAL else _pool)
            for name, fn in self.checks().items()
        }
        body: dict[str, Any] = {"checks": checks}
        redis_ok = checks.get("redis", {}).get("status", "ok") == "ok"
        body.update(self._queues_and_workers(redis_ok))
        body["system"] = _system(Path(self.settings.data_dir))
        status = "ok"
        if any(checks[c]["status"] != "ok" for c in self.CRITICAL if c in checks):
            status = "down"
        else:
            reasons = [f"{n} {c['status']}" for n, c in checks.items() if c["status"] != "ok"]
            queues = body.get("queues") or {}
            for q, d in queues.items():
                if (
                    isinstance(d, dict)
                    and d.get("ready", 0) + d.get("delayed", 0) > self.settings.queue_depth_warn
                ):
                    reasons.append(f"queue {q} backlog")
            reasons += _unserved_queues(body.get("workers"), queues)
            scheduler = body.get("scheduler") or {}
            if scheduler.get("status") == "stale":
                reasons.append("scheduler stale")
            elif scheduler.get("status") == "no_leader":
                reasons.append("no scheduler holds the lease")
            if reasons:
                status = "degraded"
                body["reasons"] = reasons
        return {"status": status, "time": datetime.now(UTC).isoformat(), **body}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        check_params(req.params, ())  # a read route: no parameter is silently ignored
        report = self.report()
        resp.status = falcon.HTTP_503 if report["status"] == "down" else falcon.HTTP_200
        if report["status"] == "down":
            resp.set_header("Retry-After", "5")
        resp.content_type = "application/json"
        resp.data = _encode(report)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _system(disk_path: Path) -> dict[str, Any]:
    mem = psutil.virtual_memory()
    proc = psutil.Process()
    out: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "cpu_percent": psutil.cpu_percent(interval=None),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "memory_used_ratio": round((mem.total - mem.available) / mem.total, 4)
        if mem.total
        else None,
        "memory_available_bytes": mem.available,
        "process_rss_bytes": proc.memory_info().rss,
    }
    try:
        out["open_fds"] = proc.num_fds()
    except (AttributeError, psutil.Error):
        pass
    try:
        disk = psutil.disk_usage(str(disk_path))
        out["disk_used_ratio"] = round(disk.used / disk.total, 4)
        out["disk_free_bytes"] = disk.free
    except OSError:
        pass
    return out


# --- profiling ----------------------------------------------------------------------------
_SLUG = re.compile(r"[^A-Za-z0-9]+")
_SAFE = re.compile(r"[^A-Za-z0-9_\-]+")


class ProfilingMiddleware:
    """Profile critical routes with pyinstrument; keep profiles of slow requests only.

    Installed only when ``profile_slow_ms`` > 0. A profile is written as
    ``<profile_dir>/<UTC time>-<METHOD>-<route>-<correlation id>-<ms>ms.html`` (and
    ``.txt``) when the request took at least ``profile_slow_ms``.
    """

    def __init__(self, settings: Settings) -> None:
        self.threshold_s = settings.profile_slow_ms / 1000
        self.routes = frozenset(r.strip() for r in settings.profile_routes.split(",") if r.strip())
        self.directory = Path(settings.profile_path)
        self.log = structlog.get_logger("analytics.profiling")

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: object, params: dict[str, Any]
    ) -> None:
        if resource is None or req.uri_template not in self.routes:
            return
        from pyinstrument import Profiler  # noqa: PLC0415

        profiler = Profiler(interval=0.001, async_mode="disabled")
        req.context.profiler = profiler
        req.context.profile_started = time.perf_counter()
        profiler.start()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        profiler = getattr(req.context, "profiler", None)
        if profiler is None:
            return
        req.context.profiler = None
        profiler.stop()
        elapsed = time.perf_counter() - req.context.profile_started
        if elapsed < self.threshold_s:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        route = _SLUG.sub("_", req.uri_template or "unmatched").strip("_")
        cid = _SAFE.sub("_", str(getattr(req.context, "correlation_id", "none")))
        base = f"{stamp}-{req.method}-{route}-{cid}-{round(elapsed * 1000)}ms"
        html = self.directory / f"{base}.html"
        html.write_text(profiler.output_html())
        (self.directory / f"{base}.txt").write_text(
            profiler.output_text(unicode=False, color=False)
        )
        self.log.warning(
            "slow request profiled",
            route=req.uri_template,
            duration_ms=round(elapsed * 1000, 1),
            profile=str(html),
        )


# --- wiring -------------------------------------------------------------------------------
def build_probe(settings: Settings) -> RedisProbe | None:
    if not settings.ops_redis:
        return None
    return RedisProbe.from_kwargs(settings.redis_kwargs(), settings.namespace, timeout_s=1.0)


def observability_middleware(settings: Settings) -> list[object]:
    """The middleware to add to the app: profiling only when it is switched on."""
    middleware: list[object] = [RequestMetricsMiddleware()]
    if settings.profile_slow_ms > 0:
        middleware.append(ProfilingMiddleware(settings))
    return middleware


def install(app: falcon.App, container: Container) -> None:
    """Add request metrics, profiling (if on), ``/metrics`` and ``/health/detailed``."""
    settings = container.settings
    for mw in observability_middleware(settings):
        app.add_middleware(mw)
    probe = container.extras.get("redis_probe")
    if not isinstance(probe, RedisProbe):
        probe = build_probe(settings)
    app.add_route("/metrics", MetricsResource(container, probe))
    app.add_route("/health/detailed", DetailedHealthResource(container, probe))
    m.watch_container(container)
    m.start_sampler("api", Path(settings.data_dir), settings.metrics_sample_interval_s)
