"""Dramatiq middleware for observability: correlation ids, task metrics, worker heartbeats.

- :class:`CorrelationContext` puts the caller's correlation id(s) in every message it
  enqueues (``options["correlation_ids"]``) and binds them to structlog's context variables
  for the duration of each message, clearing them before and after.
- :class:`TaskMetrics` records duration, outcome, retries and dead letters by actor, the
  business counters of ``process_events``, samples process/system figures in every worker
  process, and forks the worker's metrics exporter (see :func:`run_worker_exporter`).
- :class:`WorkerHeartbeat` writes ``<ns>:heartbeat:<queue>`` every few seconds for each
  queue the worker process consumes; ``/health/detailed`` reads it.

:func:`install` adds them to a broker; call it before actors are declared.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import dramatiq
import structlog
from dramatiq.middleware import Middleware

from analytics.settings import Settings

log = structlog.get_logger("analytics.telemetry")
PROCESS_EVENTS = "process_events"


def _ids_from_context() -> list[str]:
    ctx = structlog.contextvars.get_contextvars()
    ids = ctx.get("correlation_ids")
    if isinstance(ids, list) and ids:
        return [str(i) for i in ids]
    cid = ctx.get("correlation_id")
    return [str(cid)] if cid else []


class CorrelationContext(Middleware):
    """Correlation ids into every message, and from the message into the worker's logs."""

    def before_enqueue(
        self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int
    ) -> None:
        if not message.options.get("correlation_ids"):
            ids = _ids_from_context()
            if ids:
                message.options["correlation_ids"] = ids

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        structlog.contextvars.clear_contextvars()
        ids = [str(i) for i in message.options.get("correlation_ids") or []]
        context: dict[str, object] = {
            "message_id": message.message_id,
            "actor": message.actor_name,
            "queue": message.queue_name,
        }
        if len(ids) == 1:
            context["correlation_id"] = ids[0]
        elif ids:
            context["correlation_ids"] = ids
        structlog.contextvars.bind_contextvars(**context)

    def after_process_message(
        self, broker: dramatiq.Broker, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        structlog.contextvars.clear_contextvars()

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        structlog.contextvars.clear_contextvars()


class TaskMetrics(Middleware):
    """Per-actor task metrics, written to the multiprocess directory of the process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._local = threading.local()

    @property
    def forks(self) -> list[Any]:
        if self.settings.worker_metrics_port and self.settings.prometheus_multiproc_dir:
            return [run_worker_exporter]
        return []

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        from analytics.entrypoints.metrics import start_sampler  # noqa: PLC0415

        start_sampler(
            "worker", Path(self.settings.data_dir), self.settings.metrics_sample_interval_s
        )

    def after_enqueue(self, broker: dramatiq.Broker, message: Any, delay: int | None) -> None:
        from analytics.entrypoints import metrics as m  # noqa: PLC0415

        # A delayed message is enqueued twice: to <q>.DQ (with a delay), then moved to <q>
        # when due (no delay, "eta" set). Count the first only; retries count as retries.
        queue = message.queue_name.removesuffix(".DQ")
        if message.options.get("retries"):
            if delay:
                m.TASK_RETRIES.labels(message.actor_name, queue).inc()
        elif delay or "eta" not in message.options:
            m.TASKS_ENQUEUED.labels(message.actor_name, queue).inc()

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        from analytics.entrypoints import metrics as m  # noqa: PLC0415

        self._local.started = time.perf_counter()
        m.TASKS_IN_PROGRESS.inc()

    def after_process_message(
        self, broker: dramatiq.Broker, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        from analytics.entrypoints import metrics as m  # noqa: PLC0415

        started = getattr(self._local, "started", None)
        self._local.started = None
        queue = message.queue_name.removesuffix(".DQ")
        m.TASKS_IN_PROGRESS.dec()
        if started is not None:
            m.TASK_DURATION.labels(message.actor_name, queue).observe(time.perf_counter() - started)
        outcome = "failed" if exception is not None else "succeeded"
        m.TASKS_PROCESSED.labels(message.actor_name, queue, outcome).inc()
        if exception is None and message.actor_name == PROCESS_EVENTS and isinstance(result, dict):
            m.EVENTS_STORED.inc(int(result.get("stored", 0)))
            m.record_duplicates("store", int(result.get("duplicates", 0)))

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        from analytics.entrypoints import metrics as m  # noqa: PLC0415

        if getattr(self._local, "started", None) is not None:
            self._local.started = None
            m.TASKS_IN_PROGRESS.dec()

    def after_nack(self, broker: dramatiq.Broker, message: Any) -> None:
        from analytics.entrypoints import metrics as m  # noqa: PLC0415

        m.TASKS_DEAD_LETTERED.labels(
            message.actor_name, message.queue_name.removesuffix(".DQ")
        ).inc()


class WorkerHeartbeat(Middleware):
    """Writes ``<ns>:heartbeat:<queue>`` for each consumed queue every few seconds."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        if not self.settings.ops_redis:  # e.g. RabbitMQ without REDIS_HOST: nobody reads them
            return
        from analytics.adapters.redis_probe import RedisProbe  # noqa: PLC0415

        queues = sorted(
            q for q in (worker.consumer_whitelist or broker.get_declared_queues())
            if not q.endswith((".DQ", ".XQ"))
        )  # fmt: skip
        probe = RedisProbe.from_kwargs(self.settings.redis_kwargs(), self.settings.namespace, 2.0)
        interval = self.settings.worker_heartbeat_interval_s
        self._stop.clear()

        def beat() -> None:
            while True:
                try:
                    probe.write_heartbeat(queues)
                except Exception as exc:  # noqa: BLE001 - Redis may be restarting
                    log.warning("heartbeat failed", error=str(exc))
                if self._stop.wait(interval):
                    return

        self._thread = threading.Thread(target=beat, name="worker-heartbeat", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        self._stop.set()


def install(
    broker: dramatiq.Broker, settings: Settings, *, worker: bool, container: object = None
) -> None:
    """Add the observability middleware to ``broker`` (before actors are declared).

    The correlation middleware goes first so that its context covers every other
    middleware's hooks (dramatiq runs ``after_*`` hooks in reverse order).
    """
    first = type(broker.middleware[0]) if broker.middleware else None
    if first is not None:
        broker.add_middleware(CorrelationContext(), before=first)
    else:
        broker.add_middleware(CorrelationContext())
    broker.add_middleware(TaskMetrics(settings))
    if container is not None:
        from analytics.entrypoints.metrics import watch_container  # noqa: PLC0415

        watch_container(container)
    if worker:
        broker.add_middleware(WorkerHeartbeat(settings))


def run_worker_exporter() -> int:
    """Fork process of the dramatiq master: serves the workers' metrics over HTTP.

    Reads the same multiprocess directory the worker processes write; one exposition per
    request (``GET /metrics``), on ``ANALYTICS_WORKER_METRICS_HOST:PORT``.
    """
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: PLC0415

    from analytics.entrypoints import metrics as m  # noqa: PLC0415

    settings = Settings.from_env(os.environ)
    path = settings.prometheus_multiproc_dir
    data_dir = Path(settings.data_dir)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            try:
                m.sample_system(data_dir)
                body = m.render(path)
            except Exception as exc:  # noqa: BLE001
                self.send_error(500, str(exc))
                return
            self.send_response(200)
            self.send_header("Content-Type", m.CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

    address = (settings.worker_metrics_host, settings.worker_metrics_port)
    try:
        server = ThreadingHTTPServer(address, Handler)
    except OSError as exc:
        # The workers keep working (dramatiq ignores a fork's exit); only scraping is lost.
        logging.getLogger("analytics.metrics").error(
            "worker metrics exporter cannot listen on %s:%s: %s (set "
            "ANALYTICS_WORKER_METRICS_PORT to a free port, or 0 to disable)",
            *address, exc,
        )  # fmt: skip
        return 1
    server.daemon_threads = True
    server.serve_forever()
    return 0
