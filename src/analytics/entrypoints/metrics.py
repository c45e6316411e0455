"""Prometheus metrics for every process: definitions, sampling, exposition.

Multiprocess mode: gunicorn and the dramatiq CLI run several processes, so
prometheus-client writes each process's values to files in ``PROMETHEUS_MULTIPROC_DIR``
and an exposition reads them all back (:func:`render`). That variable must be set before
``prometheus_client`` is first imported: ``analytics api`` and ``analytics worker`` set it
(see :func:`prepare_multiproc_dir`) before anything imports this module.

No custom collectors: values that are read from outside (psutil, Redis) are sampled into
gauges with a multiprocess mode, on a timer in every process and again at scrape time.

Import this module only after the environment is prepared; it defines the metrics (which
register in prometheus-client's global registry, as prometheus-client requires) and
builds nothing else.
"""

from __future__ import annotations

import functools
import operator
import os
import re
import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client import values as _values
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from analytics.domain.errors import FieldError
from analytics.domain.events import Event
from analytics.entrypoints.metrics_dir import MULTIPROC_ENV, prepare_multiproc_dir  # noqa: F401

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Multiprocess mode checks the process id on every update, to notice a fork: with the
# default ``os.getpid`` that is a system call per increment, made while holding the GIL,
# eight per ingest request. Under load a system call is where the kernel switches to
# another of the worker's threads, which then waits for the GIL (measured: the pid check
# was 17 % of the time the GIL was held in a 16-thread ingest loop). The same check is
# made here against a pid refreshed in every child right after a fork, through the
# library's own ``process_identifier`` parameter. Set before any metric below exists.
_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


def process_id() -> int:
    """``os.getpid()`` without a system call (refreshed after each fork)."""
    return _pid[0]


if getattr(_values.ValueClass, "_multiprocess", False):
    _values.ValueClass = _values.MultiProcessValue(process_identifier=process_id)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
_TASK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# --- HTTP -------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "analytics_http_requests",
    "HTTP requests by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "analytics_http_request_duration_seconds",
    "HTTP request latency by route template, method and status.",
    ["route", "method", "status"],
    buckets=_LATENCY_BUCKETS,
)
HTTP_IN_PROGRESS = Gauge(
    "analytics_http_requests_in_progress",
    "HTTP requests being served now (all API processes).",
    multiprocess_mode="livesum",
)

# --- business ---------------------------------------------------------------------------
EVENTS_ACCEPTED = Counter(
    "analytics_events_accepted", "Events accepted (queued, 202) by event type.", ["event_type"]
)
EVENTS_REJECTED = Counter(
    "analytics_events_rejected",
    "Rejected events by failing rule (an event that breaks two rules counts under both).",
    ["rule"],
)
EVENTS_DUPLICATES = Counter(
    "analytics_events_duplicates",
    "Duplicate event_ids: stage=ingest (repeated inside one batch), stage=store (already stored).",
    ["stage"],
)
EVENTS_STORED = Counter("analytics_events_stored", "Events stored for the first time by workers.")
REVENUE = Counter(
    "analytics_revenue",
    "Sum of total_value (price x quantity) of accepted events, in major units of the currency "
    "(e.g. 12.5 = 12.50 EUR). A float for dashboards; exact amounts live in storage.",
    ["currency"],
)

# --- tasks and queues -------------------------------------------------------------------
TASKS_ENQUEUED = Counter(
    "analytics_tasks_enqueued", "Messages enqueued (retries excluded).", ["actor", "queue"]
)
TASKS_PROCESSED = Counter(
    "analytics_tasks_processed",
    "Message executions by outcome (succeeded, failed); a failed run may still be retried.",
    ["actor", "queue", "outcome"],
)
TASK_DURATION = Histogram(
    "analytics_task_duration_seconds",
    "Execution time of one message.",
    ["actor", "queue"],
    buckets=_TASK_BUCKETS,
)
TASK_RETRIES = Counter(
    "analytics_task_retries", "Messages scheduled for a retry.", ["actor", "queue"]
)
TASKS_DEAD_LETTERED = Counter(
    "analytics_tasks_dead_lettered", "Messages moved to the dead-letter queue.", ["actor", "queue"]
)
TASKS_IN_PROGRESS = Gauge(
    "analytics_tasks_in_progress", "Messages being executed now.", multiprocess_mode="livesum"
)
QUEUE_DEPTH = Gauge(
    "analytics_queue_depth",
    "Messages per Dramatiq queue at the last scrape; <q>.DQ = delayed/retrying, "
    "<q>.XQ = dead letters.",
    ["queue"],
    multiprocess_mode="mostrecent",
)
REDIS_UP = Gauge(
    "analytics_redis_up",
    "1 when the last probe reached Redis (queue depths are stale while 0).",
    multiprocess_mode="mostrecent",
)
QUEUE_DEPTH_ERRORS = Counter(
    "analytics_queue_depth_errors", "Scrapes that could not read the queue depths."
)

# --- cache ------------------------------------------------------------------------------
CACHE_REQUESTS = Counter(
    "analytics_cache_requests", "Cache lookups by kind of data and result (hit, miss, error).",
    ["kind", "result"],
)  # fmt: skip

# --- resilience (README, "Resilience") ---------------------------------------------------
CIRCUIT_BREAKER_STATE = Gauge(
    "analytics_circuit_breaker_state",
    "Circuit breaker state per dependency: 0 closed, 1 half-open, 2 open (the worst live"
    " process).",
    ["breaker"], multiprocess_mode="livemax",
)  # fmt: skip
CIRCUIT_BREAKER_OPENED = Counter(
    "analytics_circuit_breaker_opened", "Times a circuit breaker opened.", ["breaker"]
)
CIRCUIT_BREAKER_REJECTED = Counter(
    "analytics_circuit_breaker_rejected",
    "Calls refused at once because the breaker was open (fail fast).",
    ["breaker"],
)
CIRCUIT_BREAKER_FAILURES = Counter(
    "analytics_circuit_breaker_failures",
    "Failed calls (errors and timeouts) counted by a breaker.",
    ["breaker"],
)
CACHE_HIT_RATIO = Gauge(
    "analytics_cache_hit_ratio",
    "Hits / lookups per cache level since the process started (local: in-process LRU of"
    " closed buckets; redis: the shared cache). Across processes: use"
    " analytics_cache_requests_total{kind=~\"aggregates_(local|redis)\"}.",
    ["level"], multiprocess_mode="mostrecent",
)  # fmt: skip
WORKER_RECYCLES = Counter(
    "analytics_worker_recycles",
    "Worker processes recycled, by reason (tasks: after N tasks; memory: RSS over the limit;"
    " thread_died: a worker or consumer thread ended).",
    ["reason"],
)

# --- system and process -----------------------------------------------------------------
SYSTEM_CPU = Gauge(
    "analytics_system_cpu_percent", "Host CPU use, percent.", multiprocess_mode="mostrecent"
)
SYSTEM_MEMORY_RATIO = Gauge(
    "analytics_system_memory_used_ratio",
    "Host memory in use (total - available) / total, 0..1.",
    multiprocess_mode="mostrecent",
)
SYSTEM_MEMORY_TOTAL = Gauge(
    "analytics_system_memory_total_bytes", "Host memory.", multiprocess_mode="mostrecent"
)
SYSTEM_MEMORY_AVAILABLE = Gauge(
    "analytics_system_memory_available_bytes", "Host memory available.",
    multiprocess_mode="mostrecent",
)  # fmt: skip
SYSTEM_DISK_RATIO = Gauge(
    "analytics_system_disk_used_ratio", "Used share of the data directory's file system, 0..1.",
    multiprocess_mode="mostrecent",
)  # fmt: skip
SYSTEM_DISK_FREE = Gauge(
    "analytics_system_disk_free_bytes", "Free bytes on the data directory's file system.",
    multiprocess_mode="mostrecent",
)  # fmt: skip
PROCESS_RSS = Gauge(
    "analytics_process_resident_memory_bytes", "Resident memory of live processes, summed.",
    ["component"], multiprocess_mode="livesum",
)  # fmt: skip
PROCESS_FDS = Gauge(
    "analytics_process_open_fds", "Open file descriptors of live processes, summed.",
    ["component"], multiprocess_mode="livesum",
)  # fmt: skip
PROCESS_CPU = Gauge(
    "analytics_process_cpu_percent", "CPU use of live processes, summed (100 = one core).",
    ["component"], multiprocess_mode="livesum",
)  # fmt: skip
PROCESSES = Gauge(
    "analytics_processes", "Live processes that report metrics.", ["component"],
    multiprocess_mode="livesum",
)  # fmt: skip


# --- recording helpers (called by entrypoints) ------------------------------------------
class LabelCache:
    """Labelled metric children, made once per label values and kept.

    ``metric.labels(...)`` validates and converts its arguments and takes a lock on every
    call, which costs more than the increment it leads to; a dict lookup does not.
    ``make`` builds what one set of label values stands for (``metric.labels``, or a
    tuple of several metrics' children); at most ``limit`` are kept (label values are
    bounded anyway: routes, event types, currencies), past it ``make`` runs every time.
    """

    def __init__(self, make: Callable[..., Any], limit: int = 10_000) -> None:
        self.make = make
        self.limit = limit
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self.make(*values)
            if len(self._children) < self.limit:
                self._children[values] = child
        return child


class SharedNames:
    """The label values named so far by every process of one multiprocess directory, at
    most ``limit``: one per line in ``<dir>/<name>.names``, appended under ``flock``.

    A dead process's counter files stay in the directory until the component restarts,
    and gunicorn recycles its workers: a limit per process let each new worker add its
    own values (review). The file lives and dies with the directory."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path, self.limit = path, limit

    def admit(self, value: str) -> tuple[bool, frozenset[str] | None]:
        """Whether ``value`` has its own series, and once no more can be added, every
        value that has (they never change after that)."""
        import fcntl  # noqa: PLC0415

        with open(self.path, "a+", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
            f.seek(0)
            names = f.read().split()
            before = len(names)
            named, final = _admit(names, value, self.limit)
            if len(names) > before:  # newly named: for every other process too
                f.write(value + "\n")
                f.flush()
            return named, final


class LocalNames:
    """:class:`SharedNames` for one process (no multiprocess directory: tests, one worker)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.names = limit, list[str]()

    def admit(self, value: str) -> tuple[bool, frozenset[str] | None]:
        return _admit(self.names, value, self.limit)


def _admit(names: list[str], value: str, limit: int) -> tuple[bool, frozenset[str] | None]:
    """Name ``value`` if it is named or a slot is free (appended to ``names``); and once
    every slot is taken, the names (they never change after that)."""
    named = value in names
    if not named and len(names) < limit:
        names.append(value)
        named = True
    return named, frozenset(names) if len(names) >= limit else None


class BoundedLabel:
    """The children of a metric whose one label takes values a client chooses (event types).

    Each value is a time series in every process's memory, in the multiprocess files and
    in every scrape, so a client must not be able to add them without end: the first
    ``limit`` distinct values get their own series (across the processes of the metrics
    directory with :class:`SharedNames`, else in this process), later new ones count under
    ``OTHER`` (which no event type can be: types start with a letter). The exact counts
    per type are the aggregations API's; this is for operations.
    """

    OTHER = "_other"

    def __init__(self, make: Callable[[str], Any], limit: int,
                 names: SharedNames | LocalNames | None = None) -> None:  # fmt: skip
        self.make = make
        self.names = names or LocalNames(limit)
        self._children: dict[str, Any] = {}
        # Once every slot is taken: the values that have one (a value not among them
        # never will); None while slots are free.
        self._final: frozenset[str] | None = None
        self._lock = threading.Lock()

    def __call__(self, value: str) -> Any:
        child = self._children.get(value)
        if child is None:
            with self._lock:  # two threads meeting the last free slot take it once
                child = self._children.get(value)
                if child is None:
                    if self._admit(value):
                        child = self._children[value] = self.make(value)
                    else:
                        child = self._children.get(self.OTHER)
                        if child is None:
                            child = self._children[self.OTHER] = self.make(self.OTHER)
        return child

    def _admit(self, value: str) -> bool:
        if self._final is not None:
            return value in self._final
        try:
            named, self._final = self.names.admit(value)
        except OSError:  # /dev/shm full or gone: counted, as _other, never a failure
            return False
        return named


def accepted_by_type(limit: int = 100) -> BoundedLabel:
    """``analytics_events_accepted_total``'s children, at most ``limit`` event types named
    (``ANALYTICS_METRICS_EVENT_TYPES``) across the processes of the multiprocess directory
    (every gunicorn worker, recycled ones included), or per app without one."""
    directory = os.environ.get(MULTIPROC_ENV)
    names = SharedNames(Path(directory) / "event_types.names", limit) if directory else None
    return BoundedLabel(EVENTS_ACCEPTED.labels, limit, names)


def record_accepted(events: Sequence[Event], by_type: BoundedLabel) -> None:
    """Count a group of accepted events: one increment per event type and per currency.

    Aggregated first because each prometheus-client increment costs a lock and an mmap
    write: per event that was a large share of a batch's CPU. Revenue is summed exactly
    (Decimal) and converted to the counter's float once. A single event (every request
    on the single-event route) takes a direct path; a batch in one currency (or none) is
    summed in C (``collections.Counter``, ``sum``), others event by event.
    """
    if len(events) == 1:
        event = events[0]
        by_type(event.event_type).inc()
        if event.total_value is not None and event.currency:
            _revenue(event.currency).inc(float(event.total_value))
        return
    for event_type, count in Tally(map(_get_event_type, events)).items():
        by_type(event_type).inc(count)
    currencies = set(map(_get_currency, events))
    revenue: dict[str, Decimal] = {}
    if len(currencies) == 1:
        currency = next(iter(currencies))
        totals = list(map(_get_total_value, events))
        if currency and any(map(_is_not_none, totals)):
            revenue[currency] = sum(filter(_is_not_none, totals), _ZERO)
    else:
        for event in events:
            if event.total_value is not None and event.currency:
                revenue[event.currency] = revenue.get(event.currency, _ZERO) + event.total_value
    for currency, amount in revenue.items():
        _revenue(currency).inc(float(amount))


_revenue = LabelCache(REVENUE.labels)
_get_event_type = operator.attrgetter("event_type")
_get_currency = operator.attrgetter("currency")
_get_total_value = operator.attrgetter("total_value")
_is_not_none = functools.partial(operator.is_not, None)
_ZERO = Decimal(0)


def record_rejected(errors: Iterable[FieldError] | Iterable[Mapping[str, str]]) -> None:
    """One increment per distinct failing rule of one rejected event."""
    rules = set()
    for err in errors:
        rules.add(err.rule if isinstance(err, FieldError) else str(err.get("rule", "invalid")))
    for rule in rules or {"invalid"}:
        EVENTS_REJECTED.labels(rule).inc()


def record_duplicates(stage: str, count: int) -> None:
    if count > 0:
        EVENTS_DUPLICATES.labels(stage).inc(count)


def record_cache(kind: str, hit: bool) -> None:
    """For cache adapters: one lookup of ``kind`` (e.g. dashboard, aggregates)."""
    CACHE_REQUESTS.labels(kind, "hit" if hit else "miss").inc()


_watched: list[tuple[str, object, dict[str, int]]] = []
_watched_lock = threading.Lock()


def watch_cache(kind: str, cache: object) -> None:
    """Follow a cache adapter's cumulative ``hits``/``misses``/``errors`` attributes.

    The adapter stays free of prometheus: its counts are turned into counter increments
    by :func:`sync_caches`, on the sampler's timer and at each scrape.
    """
    if any(c is cache for _, c, _ in _watched):
        return
    with _watched_lock:
        _watched.append((kind, cache, {"hit": 0, "miss": 0, "error": 0}))


_breakers: list[tuple[object, dict[str, int]]] = []


def watch_breakers(registry: object) -> None:
    """Follow a :class:`~analytics.adapters.circuit_breaker.BreakerRegistry` (states and
    cumulative counts are copied into the metrics by :func:`sync_breakers`)."""
    with _watched_lock:
        if not any(r is registry for r, _ in _breakers):
            _breakers.append((registry, {}))


def sync_breakers() -> None:
    from analytics.adapters.circuit_breaker import STATE_VALUES  # noqa: PLC0415

    with _watched_lock:
        for registry, last in _breakers:
            for b in registry:  # type: ignore[attr-defined]
                CIRCUIT_BREAKER_STATE.labels(b.name).set(STATE_VALUES[b.state])
                for counter, attr in (
                    (CIRCUIT_BREAKER_OPENED, "opened"),
                    (CIRCUIT_BREAKER_REJECTED, "rejected"),
                    (CIRCUIT_BREAKER_FAILURES, "failures"),
                ):
                    key = f"{b.name}:{attr}"
                    now = int(getattr(b, attr))
                    if now > last.get(key, 0):
                        counter.labels(b.name).inc(now - last.get(key, 0))
                    last[key] = now


def sync_cache_levels() -> None:
    """Per-level hit ratios of a two-level cache (see ``adapters/tiered_cache.py``)."""
    with _watched_lock:
        levels = [(k, c) for k, c, _ in _watched if k in ("aggregates_local", "aggregates_redis")]
    for kind, cache in levels:
        hits, misses = int(getattr(cache, "hits", 0)), int(getattr(cache, "misses", 0))
        if hits + misses:
            CACHE_HIT_RATIO.labels(kind.removeprefix("aggregates_")).set(hits / (hits + misses))


def sync_caches() -> None:
    sync_breakers()  # same timers (sampler, scrape) as the cache counters
    sync_cache_levels()
    with _watched_lock:
        for kind, cache, last in _watched:
            for result, attr in (("hit", "hits"), ("miss", "misses"), ("error", "errors")):
                now = int(getattr(cache, attr, 0) or 0)
                if now > last[result]:
                    CACHE_REQUESTS.labels(kind, result).inc(now - last[result])
                last[result] = now


def watch_container(container: object) -> None:
    """Hook the container's cache (when it has one that counts) into the metrics."""
    for name in ("cache", "metrics_cache"):
        cache = getattr(container, name, None)
        if cache is None:
            extras = getattr(container, "extras", {})
            cache = extras.get(name) if isinstance(extras, dict) else None
        if cache is not None and hasattr(cache, "hits") and hasattr(cache, "misses"):
            watch_cache("aggregates", cache)
        for level in ("local", "redis"):  # the two levels of a tiered cache
            stats = getattr(cache, f"{level}_stats", None)
            if stats is not None:
                watch_cache(f"aggregates_{level}", stats)
    extras = getattr(container, "extras", {})
    registry = extras.get("breakers") if isinstance(extras, dict) else None
    if registry is not None:
        watch_breakers(registry)


def record_queue_depths(depths: Mapping[str, int]) -> None:
    for queue, depth in depths.items():
        QUEUE_DEPTH.labels(queue).set(depth)


def record_redis_up(up: bool) -> None:
    REDIS_UP.set(1 if up else 0)


# --- system sampling --------------------------------------------------------------------
def sample_system(disk_path: Path | None = None) -> None:
    """Host-wide figures (any process may sample them; the most recent value wins)."""
    SYSTEM_CPU.set(psutil.cpu_percent(interval=None))
    mem = psutil.virtual_memory()
    SYSTEM_MEMORY_TOTAL.set(mem.total)
    SYSTEM_MEMORY_AVAILABLE.set(mem.available)
    SYSTEM_MEMORY_RATIO.set((mem.total - mem.available) / mem.total if mem.total else 0)
    if disk_path is not None:
        disk_path = _existing(Path(disk_path))
        try:
            disk = psutil.disk_usage(str(disk_path))
        except OSError:
            return
        SYSTEM_DISK_FREE.set(disk.free)
        SYSTEM_DISK_RATIO.set(disk.used / disk.total if disk.total else 0)


def _existing(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


_process: dict[int, psutil.Process] = {}


def sample_process(component: str) -> None:
    """This process's own figures; ``livesum`` adds the live processes of a component."""
    pid = os.getpid()
    proc = _process.get(pid)
    if proc is None:
        proc = _process[pid] = psutil.Process(pid)
        proc.cpu_percent(None)  # the first call only sets the reference point
    with proc.oneshot():
        PROCESS_RSS.labels(component).set(proc.memory_info().rss)
        PROCESS_CPU.labels(component).set(proc.cpu_percent(None))
        try:
            PROCESS_FDS.labels(component).set(proc.num_fds())
        except (AttributeError, psutil.Error):  # not on every platform
            pass
    PROCESSES.labels(component).set(1)


_samplers: dict[int, threading.Thread] = {}
_samplers_lock = threading.Lock()


def start_sampler(component: str, disk_path: Path | None, interval_s: float) -> None:
    """A daemon thread per process that samples system and process figures (fork-safe)."""
    pid = os.getpid()
    with _samplers_lock:
        thread = _samplers.get(pid)
        if thread is not None and thread.is_alive():
            return

        def run() -> None:
            pause = threading.Event()
            while True:
                try:
                    sample_process(component)
                    sample_system(disk_path)
                    sync_caches()
                except Exception:  # noqa: BLE001, S110 - a sampling hiccup must not kill the thread
                    pass
                pause.wait(interval_s)

        thread = threading.Thread(target=run, name=f"metrics-sampler-{component}", daemon=True)
        _samplers[pid] = thread
        thread.start()


# --- multiprocess directory and exposition ----------------------------------------------
_DB_FILE = re.compile(r"_(\d+)\.db$")


def mark_dead_processes(path: Path) -> list[int]:
    """Drop the live-gauge files of processes that are gone (gunicorn also calls
    ``mark_process_dead`` from ``child_exit``; this catches dramatiq reloads and kills)."""
    dead: list[int] = []
    for file in Path(path).glob("*_*.db"):
        match = _DB_FILE.search(file.name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid not in dead and not psutil.pid_exists(pid):
            dead.append(pid)
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(path))
    return dead


def render(multiproc_dir: Path | None) -> bytes:
    """The exposition text: every process of the directory, or this process alone."""
    if multiproc_dir is None:
        return generate_latest(REGISTRY)
    mark_dead_processes(multiproc_dir)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(multiproc_dir))
    return generate_latest(registry)


def make_child_exit(path: Path) -> object:
    """gunicorn ``child_exit`` hook: forget a dead worker's live gauges."""

    def child_exit(server: object, worker: object) -> None:
        multiprocess.mark_process_dead(worker.pid, str(path))  # type: ignore[attr-defined]

    return child_exit
