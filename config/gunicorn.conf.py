"""gunicorn settings for the analytics API in production (``analytics api --config``).

Loaded by ``analytics api --config config/gunicorn.conf.py`` on top of the defaults the
service derives from its settings: a value here replaces a default, and a setting the
operator set explicitly (``ANALYTICS_WEB_WORKERS``, ``--threads``, ...) still wins over this
file. ``bind`` is not set here: ``ANALYTICS_HOST`` / ``ANALYTICS_PORT`` decide it.

Sizing: one gthread worker process per CPU the container may use (the GIL lets one process
use one core) and threads for the time a request waits on Redis (ingest is I/O-bound:
validation, then a group-committed broker write).

The two hooks keep prometheus-client's multiprocess mode correct across worker restarts
(``max_requests`` recycles workers on purpose): ``on_starting`` empties the directory so a
restart does not add the last run's counters, and ``child_exit`` marks a dead worker's
live gauges as gone. ``analytics api`` also prepares the directory and installs an
equivalent ``child_exit`` itself; the hooks here make the file complete for any launcher.
"""

from __future__ import annotations

import os
from pathlib import Path


def _cpus() -> int:
    """CPUs this process may run on (affinity, e.g. ``docker --cpuset-cpus``), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


CPUS = _cpus()

# --- processes ------------------------------------------------------------------------
worker_class = "gthread"
workers = _clamp(CPUS, 2, 16)  # two at least: one can be recycled while the other serves
threads = _clamp(8 * CPUS, 8, 32)

# --- time limits ----------------------------------------------------------------------
timeout = 30  # a worker silent this long is killed and replaced
graceful_timeout = 20  # SIGTERM: in-flight requests get this long (compose stop_grace_period 30s)
keepalive = 5  # seconds an idle keep-alive connection stays open (behind a load balancer)

# --- recycling: bound the effect of any slow leak; jitter keeps workers from restarting together
max_requests = 20_000
max_requests_jitter = 2_000

# --- request limits (the app checks body sizes itself; these bound the request head) ----
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190

# --- logs: the app writes JSON access logs itself ---------------------------------------
accesslog = None
errorlog = "-"
loglevel = "warning"

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def on_starting(server: object) -> None:
    """Master start: empty the prometheus multiprocess directory of an earlier run's files."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for leftover in directory.glob("*.db"):
        leftover.unlink(missing_ok=True)


def child_exit(server: object, worker: object) -> None:
    """A worker exited (recycled, killed, timed out): drop its live gauges from /metrics."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return
    from prometheus_client import multiprocess  # noqa: PLC0415 - only after the env is set

    multiprocess.mark_process_dead(worker.pid, path)  # type: ignore[attr-defined]
