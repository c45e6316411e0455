"""The module the ``dramatiq`` CLI imports in each worker process.

Builds the container from the environment, sets the broker, then declares the actors,
in that order (actors bind to the broker that exists when they are declared).
"""

from __future__ import annotations

import os

import dramatiq
import structlog

from analytics.adapters.recycler import ThreadWatch, WorkerRecycler
from analytics.adapters.worker_registry import ActorRegistry
from analytics.bootstrap import bootstrap, ops_redis_client
from analytics.entrypoints import metrics as _metrics
from analytics.entrypoints.actors import register_actors
from analytics.entrypoints.logs import configure_logging, drain_log_pipe_when_orphaned
from analytics.entrypoints.telemetry import install as install_telemetry
from analytics.settings import Settings

settings = Settings.from_env(os.environ)
configure_logging(settings.log_level, settings.log_format)
drain_log_pipe_when_orphaned()  # a killed master must not leave this process blocked
try:
    container = bootstrap(settings)
except Exception:  # noqa: BLE001 - storage or Redis unusable: one JSON line, exit 1
    # (uncaught, multiprocessing would print the traceback as text; dramatiq's master
    # still reports the exit and shuts down, and `analytics serve` restarts it).
    structlog.get_logger("analytics.worker").exception("worker process could not start")
    raise SystemExit(1) from None
broker = container.broker
install_telemetry(broker, settings, worker=True, container=container)
dramatiq.set_broker(broker)
# Recycle worker processes after N tasks (SIGHUP to the dramatiq master; adapters/recycler.py).
# Boots and recycles are counted in the operations Redis: beside RabbitMQ too (QA: the
# broker's own client, None there, left them uncounted though REDIS_HOST was set).
ops_client = ops_redis_client(settings, broker)
broker.add_middleware(
    WorkerRecycler(settings.worker_max_tasks, client=ops_client, namespace=settings.namespace)
)
# Recycle a process that lost a worker or consumer thread (adapters/recycler.py).
broker.add_middleware(
    ThreadWatch(
        recycle=next(m for m in broker.middleware if isinstance(m, WorkerRecycler)).recycle,
        on_recycle=lambda: _metrics.WORKER_RECYCLES.labels("thread_died").inc(),
    )
)
# Recycle a process whose RSS passes ANALYTICS_WORKER_MAX_RSS_MB, the same way (README,
# "Resilience"; adapters/memory_limit.py).
if settings.worker_max_rss_mb:
    from analytics.adapters.memory_limit import MemoryLimit  # noqa: E402

    broker.add_middleware(
        MemoryLimit(
            settings.worker_max_rss_mb * 2**20,
            recycle=next(m for m in broker.middleware if isinstance(m, WorkerRecycler)).recycle,
            on_recycle=lambda rss: _metrics.WORKER_RECYCLES.labels("memory").inc(),
        )
    )
# Record the declared actors for the scheduler (adapters/worker_registry.py).
broker.add_middleware(ActorRegistry(ops_client, settings.namespace))
actors = register_actors(container)
