"""The composition root: wires adapters to ports from settings, once per process.

Callers (tests above all) pass any collaborator they want to replace; only what they did
not pass is built from settings. Importing this module has no effect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.brokers.stub import StubBroker

from analytics.domain.clock import SystemClock, uuid4
from analytics.domain.ports import (
    AggregateStore,
    AggregationJobs,
    ApiKeyStore,
    Backlog,
    Cache,
    Clock,
    EventRepository,
    IdGenerator,
    Notifier,
    RateLimiter,
    TaskQueue,
    TaskStatusStore,
    UnitOfWork,
)
from analytics.domain.validation import DEFAULT_LIMITS, Limits
from analytics.settings import Settings

if TYPE_CHECKING:
    from analytics.adapters.task_status_middleware import TaskStatusMiddleware
    from analytics.application.queries import QueryDeps
    from analytics.domain.ports import DeadLetters


@dataclass
class Container:
    """Everything a process needs, built by :func:`bootstrap`."""

    settings: Settings
    clock: Clock
    new_id: IdGenerator
    broker: dramatiq.Broker
    task_queue: TaskQueue
    event_repo: EventRepository
    limits: Limits = DEFAULT_LIMITS
    dead_letters: DeadLetters | None = None
    extras: dict[str, object] = field(default_factory=dict)
    notifier: Notifier | None = None  # None: notifications off (no topic configured)
    api_keys: ApiKeyStore | None = None  # None only when auth is disabled
    rate_limiter: RateLimiter | None = None  # None: rate limiting disabled
    backlog: Backlog | None = None  # None: no overload check
    aggregates: AggregateStore | None = None
    uow: UnitOfWork | None = None  # one commit for the event and its counts, where possible
    cache: Cache | None = None
    aggregation_jobs: AggregationJobs | None = None
    task_status: TaskStatusStore | None = None
    cursor_secret: bytes = b""


def build_event_repo(settings: Settings) -> EventRepository:
    if settings.storage == "memory":
        from analytics.adapters.memory import InMemoryEventRepository  # noqa: PLC0415

        return InMemoryEventRepository()
    if settings.storage == "sqlite":
        from analytics.adapters.sqlite_store import (  # noqa: PLC0415
            SQLiteDatabase,
            SQLiteEventRepository,
        )

        return SQLiteEventRepository(
            SQLiteDatabase(settings.sqlite_path, busy_timeout_s=settings.sqlite_busy_timeout_s)
        )
    if settings.storage == "dynamodb":
        from analytics.adapters.aws import dynamodb_client  # noqa: PLC0415
        from analytics.adapters.dynamodb_events import (  # noqa: PLC0415
            Backoff,
            DynamoDBEventRepository,
        )

        return DynamoDBEventRepository(
            dynamodb_client(settings),
            settings.events_table,
            clock=SystemClock(),
            directory_table=settings.aggregates_table,
            shards=settings.dynamodb_shards,
            retention_days=settings.retention_days,
            backoff=Backoff(
                max_attempts=settings.batch_write_max_attempts,
                cap_s=settings.batch_write_backoff_cap_s,
            ),
        )
    raise ValueError(f"storage {settings.storage!r} is not available in this build")


def build_notifier(settings: Settings) -> Notifier | None:
    """SNS when a topic is configured, otherwise None (notifications off)."""
    if not settings.sns_topic_arn:
        return None
    from analytics.adapters.aws import sns_client  # noqa: PLC0415
    from analytics.adapters.sns_notifier import SnsNotifier  # noqa: PLC0415

    return SnsNotifier(sns_client(settings), settings.sns_topic_arn)


def build_dead_letters(broker: dramatiq.Broker, failures: Any = None) -> DeadLetters:
    """Dead letters of the Redis or RabbitMQ broker; the stub gets an empty in-memory view.
    On RabbitMQ, their reasons from ``failures`` (:func:`failure_log`) when given."""
    from dramatiq.brokers.redis import RedisBroker  # noqa: PLC0415

    if isinstance(broker, RedisBroker):
        from analytics.adapters.dead_letters import RedisDeadLetters  # noqa: PLC0415

        return RedisDeadLetters(broker)
    if _is_rabbitmq(broker):
        from analytics.adapters.dead_letters import RabbitDeadLetters  # noqa: PLC0415

        return RabbitDeadLetters(broker, failures=failures)
    from analytics.adapters.memory import InMemoryDeadLetters  # noqa: PLC0415

    return InMemoryDeadLetters()


def key_store_kind(settings: Settings) -> str:
    if settings.key_store != "auto":
        return settings.key_store
    return "redis" if settings.redis_host else "sqlite"


def build_key_store(settings: Settings) -> ApiKeyStore:
    """Where API keys live (shared Redis, the data dir's SQLite, or memory for tests),
    with the keys of ``ANALYTICS_API_KEYS`` layered over it."""
    base = _build_base_key_store(settings)
    if not settings.api_keys:
        return base
    from analytics.adapters.static_keys import StaticKeysOverlay  # noqa: PLC0415
    from analytics.domain.auth import parse_static_keys, static_key  # noqa: PLC0415

    now = SystemClock().now()
    keys = [static_key(n, sc, k, now=now) for n, sc, k in parse_static_keys(settings.api_keys)]
    return StaticKeysOverlay(keys, base)


def _build_base_key_store(settings: Settings) -> ApiKeyStore:
    kind = key_store_kind(settings)
    if kind == "memory":
        from analytics.adapters.memory import InMemoryApiKeyStore  # noqa: PLC0415

        return InMemoryApiKeyStore()
    if kind == "redis":
        from analytics.adapters.redis_clients import redis_client  # noqa: PLC0415
        from analytics.adapters.redis_keys import RedisApiKeyStore  # noqa: PLC0415

        return RedisApiKeyStore(redis_client(settings), settings.namespace)
    from analytics.adapters.sqlite_keys import SQLiteApiKeyStore  # noqa: PLC0415

    return SQLiteApiKeyStore(settings.keys_path)


def _is_rabbitmq(broker: dramatiq.Broker) -> bool:
    """dramatiq's RabbitmqBroker or ours (pika is optional: no import here)."""
    return any(c.__name__ == "RabbitmqBroker" for c in type(broker).__mro__)


def _side_call_client(settings: Settings, broker: dramatiq.Broker) -> object | None:
    """A client with a short timeout for the calls a request makes beside its real work
    (``redis_clients.SIDE_CALL_TIMEOUT_S``), on the Redis broker's server or the one the
    settings name; None without a Redis."""
    if getattr(broker, "client", None) is None and not (settings.redis_host or settings.redis_socket):
        return None
    from analytics.adapters.redis_clients import side_call_client  # noqa: PLC0415

    return side_call_client(settings)


def build_rate_limiter(settings: Settings, broker: dramatiq.Broker) -> RateLimiter | None:
    """Redis (shared by every worker) when Redis is there; per-process memory otherwise."""
    backend = settings.rate_limit
    if backend == "disabled":
        return None
    client = _side_call_client(settings, broker) if backend in ("auto", "redis") else None
    if client is not None:
        from analytics.adapters.redis_ratelimit import RedisRateLimiter  # noqa: PLC0415

        return RedisRateLimiter(client, settings.namespace)  # type: ignore[arg-type]
    if backend == "redis":
        raise ValueError("rate_limit=redis needs REDIS_HOST or a Redis broker")
    from analytics.adapters.memory import InMemoryRateLimiter  # noqa: PLC0415

    return InMemoryRateLimiter()


def failure_log(settings: Settings, broker: dramatiq.Broker) -> Any:
    """Where a RabbitMQ worker records why a message was dead-lettered (RabbitMQ keeps the
    message as delivered), for as long as RabbitMQ keeps the letter: the Redis beside it
    (``Settings.ops_redis``); None on other brokers or with no such Redis."""
    if not _is_rabbitmq(broker):
        return None
    client = ops_redis_client(settings, broker)
    if client is None:
        return None
    from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL  # noqa: PLC0415

    from analytics.adapters.dead_letter_recorder import FailureLog  # noqa: PLC0415

    return FailureLog(client, settings.namespace, DEAD_MESSAGE_TTL // 1000)


def equip_failure_log(broker: dramatiq.Broker, failures: Any) -> None:
    """The worker side of :func:`failure_log`: its dead-letter recorder writes there."""
    from analytics.adapters.dead_letter_recorder import DeadLetterRecorder  # noqa: PLC0415

    for m in broker.middleware:
        if isinstance(m, DeadLetterRecorder) and m.failures is None:
            m.failures = failures


def equip_drain_counter(settings: Settings, broker: dramatiq.Broker) -> None:
    """Workers count processed high_priority messages: the drain rate overload uses."""
    from analytics.adapters.backlog import DrainCounter  # noqa: PLC0415

    client = ops_redis_client(settings, broker)
    if client is not None and not any(isinstance(m, DrainCounter) for m in broker.middleware):
        broker.add_middleware(DrainCounter(client, settings.namespace))


def ops_redis_client(settings: Settings, broker: dramatiq.Broker) -> Any:
    """The Redis for the operations records (drain counter, actor registry): the Redis
    broker's own client, beside another broker the Redis the settings name
    (``Settings.ops_redis``), else None (a stub broker, or RabbitMQ alone)."""
    client = getattr(broker, "client", None)
    if client is not None or not settings.ops_redis or isinstance(broker, StubBroker):
        return client
    from analytics.adapters.redis_clients import redis_client  # noqa: PLC0415

    return redis_client(settings)


def build_backlog(settings: Settings, broker: dramatiq.Broker) -> Backlog | None:
    from analytics.adapters.backlog import RabbitBacklog, RedisBacklog, StubBacklog  # noqa: PLC0415

    if getattr(broker, "client", None) is not None:  # a probe: fails open, so a short timeout
        return RedisBacklog(_side_call_client(settings, broker), settings.namespace)  # type: ignore[arg-type]
    if _is_rabbitmq(broker):
        return RabbitBacklog(broker, ops_redis_client(settings, broker), settings.namespace)
    if isinstance(broker, StubBroker):
        return StubBacklog(broker)
    return None


def build_aggregates(settings: Settings, event_repo: EventRepository) -> AggregateStore:
    """The aggregate store beside the event store (SQLite: the same database file)."""
    if settings.storage == "memory":
        from analytics.adapters.memory import InMemoryAggregateStore  # noqa: PLC0415

        return InMemoryAggregateStore()
    if settings.storage == "sqlite":
        from analytics.adapters.sqlite_aggregates import SQLiteAggregateStore  # noqa: PLC0415
        from analytics.adapters.sqlite_store import SQLiteDatabase  # noqa: PLC0415

        db = getattr(event_repo, "db", None)
        if not isinstance(db, SQLiteDatabase):
            db = SQLiteDatabase(settings.sqlite_path, busy_timeout_s=settings.sqlite_busy_timeout_s)
        return SQLiteAggregateStore(db)
    if settings.storage == "dynamodb":
        from analytics.adapters.aws import dynamodb_client  # noqa: PLC0415
        from analytics.adapters.dynamodb_aggregates import DynamoDBAggregateStore  # noqa: PLC0415

        client = getattr(event_repo, "client", None) or dynamodb_client(settings)
        return DynamoDBAggregateStore(
            client, settings.aggregates_table, shards=settings.aggregate_shards,
            max_read_days=settings.dynamodb_max_read_days,
        )  # fmt: skip
    raise ValueError(f"storage {settings.storage!r} has no aggregate store in this build")


def build_cache(settings: Settings, clock: Clock) -> Cache | None:
    """Redis cache by default (the client connects lazily); ``memory`` or ``none`` in tests."""
    backend = settings.cache_backend
    if backend == "auto":
        backend = "redis" if settings.broker == "redis" else "none"
    if backend == "none":
        return None
    if backend == "memory":
        from analytics.adapters.memory import InMemoryCache  # noqa: PLC0415

        return InMemoryCache(clock)
    from analytics.adapters.redis_cache import RedisCache  # noqa: PLC0415
    from analytics.adapters.redis_clients import SIDE_CALL_TIMEOUT_S, redis_client  # noqa: PLC0415

    # Retries on a connection error, none on a timeout (redis_clients), and the socket
    # timeout of a side call: a cache is worth milliseconds, so a Redis that does not
    # answer costs a query at most that much per call (with the broker's 5 s, a stalled
    # Redis held each dashboard request 10.5 s until the breaker opened).
    return with_local_level(
        settings,
        RedisCache(
            redis_client(settings, timeout_s=SIDE_CALL_TIMEOUT_S),
            namespace=settings.namespace,
            # With breakers on, the cache breaker decides when Redis is skipped (after a
            # configurable run of failures, with a half-open trial); the adapter's own
            # skip-after-one-error would hide those failures from it.
            retry_after_s=1e-6 if settings.breakers else settings.cache_retry_after_s,
            version_hold_s=settings.cache_version_hold_s,
        ),
    )


def with_local_level(settings: Settings, cache: Cache) -> Cache:
    """The in-process LRU of closed buckets in front of a shared cache (README,
    "Resilience": which data lives at which level, and why it is never stale)."""
    from analytics.adapters.tiered_cache import TieredCache  # noqa: PLC0415

    # With 0 entries the local level is off, but values still carry the flag that lets
    # other processes (with the level on) keep closed buckets locally.

    return TieredCache(  # type: ignore[return-value]
        cache, max_entries=settings.local_cache_entries, min_ttl_s=settings.local_cache_min_ttl_s
    )


def build_task_status(settings: Settings) -> TaskStatusStore:
    """Redis-backed records (TTL ``task_status_ttl_s``); the stub broker gets the fake."""
    if settings.broker == "stub":
        from analytics.adapters.memory import InMemoryTaskStatusStore  # noqa: PLC0415

        return InMemoryTaskStatusStore()
    from analytics.adapters.redis_clients import redis_client  # noqa: PLC0415
    from analytics.adapters.redis_task_status import RedisTaskStatusStore  # noqa: PLC0415

    return RedisTaskStatusStore(
        redis_client(settings),
        namespace=settings.namespace,
        ttl_s=settings.task_status_ttl_s,
    )


def status_middleware(task_status: TaskStatusStore, clock: Clock) -> TaskStatusMiddleware:
    """The task-status middleware; on Redis its ``running`` records are written in the
    background, many per round trip (``DeferredUpdates``)."""
    from analytics.adapters.redis_task_status import RedisTaskStatusStore  # noqa: PLC0415
    from analytics.adapters.task_status_middleware import (  # noqa: PLC0415
        DeferredUpdates,
        TaskStatusMiddleware,
    )

    deferred = (
        DeferredUpdates(task_status.apply_many)
        if isinstance(task_status, RedisTaskStatusStore)
        else None
    )
    return TaskStatusMiddleware(task_status, clock, deferred=deferred)


def build_cursor_secret(settings: Settings) -> bytes:
    """The configured key; else one kept in the data dir (a per-process key for the
    in-memory store, whose events do not outlive the process either)."""
    if settings.cursor_secret:
        return settings.cursor_secret.encode()
    if settings.storage == "memory":
        import secrets  # noqa: PLC0415

        return secrets.token_bytes(32)
    from analytics.adapters.secret_file import load_or_create_secret  # noqa: PLC0415

    return load_or_create_secret(settings.cursor_secret_path)


def adapter_modules(settings: Settings) -> list[str]:
    """The modules ``bootstrap(settings)`` imports for this configuration's adapters, and
    only those (no boto3 for SQLite, no pika for Redis). ``analytics worker`` imports them
    once, before its processes fork, so each process starts with them loaded. A module
    missing here is imported by the process itself; importing one has no effect."""
    mods = [
        "analytics.adapters.dramatiq_queue",
        "analytics.adapters.dramatiq_jobs",
        "analytics.adapters.dead_letter_recorder",
        "analytics.adapters.backlog",
        "analytics.adapters.deferral",
        "analytics.adapters.secret_file",
    ]
    mods += {
        "sqlite": ["analytics.adapters.sqlite_store", "analytics.adapters.sqlite_aggregates"],
        "dynamodb": [
            "analytics.adapters.aws",
            "analytics.adapters.dynamodb_events",
            "analytics.adapters.dynamodb_aggregates",
        ],
    }.get(settings.storage, ["analytics.adapters.memory"])
    if settings.broker == "redis":
        mods += ["analytics.adapters.redis_task_status", "analytics.adapters.dead_letters"]
    else:
        mods += ["analytics.adapters.memory"]
    if settings.broker == "rabbitmq":
        mods += ["analytics.adapters.rabbitmq_broker"]  # and pika with it
    if settings.cache_backend in ("redis", "auto") and settings.broker == "redis":
        mods += ["analytics.adapters.redis_cache", "analytics.adapters.tiered_cache"]
    if settings.rate_limit in ("auto", "redis"):
        mods += ["analytics.adapters.redis_ratelimit"]
    if settings.breakers:
        mods += ["analytics.adapters.circuit_breaker", "analytics.adapters.guarded"]
    if settings.sns_topic_arn:
        mods += ["analytics.adapters.aws", "analytics.adapters.sns_notifier"]
    return list(dict.fromkeys(mods))


def bootstrap(
    settings: Settings,
    *,
    clock: Clock | None = None,
    new_id: IdGenerator | None = None,
    broker: dramatiq.Broker | None = None,
    task_queue: TaskQueue | None = None,
    event_repo: EventRepository | None = None,
    notifier: Notifier | None = None,
    dead_letters: DeadLetters | None = None,
    api_keys: ApiKeyStore | None = None,
    rate_limiter: RateLimiter | None = None,
    backlog: Backlog | None = None,
    aggregates: AggregateStore | None = None,
    cache: Cache | None = None,
    aggregation_jobs: AggregationJobs | None = None,
    task_status: TaskStatusStore | None = None,
    cursor_secret: bytes | None = None,
) -> Container:
    from analytics.adapters.dramatiq_jobs import DramatiqAggregationJobs  # noqa: PLC0415
    from analytics.adapters.dramatiq_queue import carry_status_on_ack  # noqa: PLC0415
    from analytics.adapters.task_status_middleware import install  # noqa: PLC0415

    clock = clock or SystemClock()
    task_status = task_status or build_task_status(settings)
    equip = broker is None  # a broker the caller passed is theirs to equip
    if broker is None:
        broker = build_broker(settings)
        install(broker, status_middleware(task_status, clock))
        carry_status_on_ack(broker)  # Redis: each succeeded record travels with its ack
        equip_drain_counter(settings, broker)
    failures = failure_log(settings, broker)  # one for the recorder and the dead letters
    if equip:
        equip_failure_log(broker, failures)
    event_repo = event_repo or build_event_repo(settings)
    aggregates = aggregates or build_aggregates(settings, event_repo)
    container = Container(
        settings=settings,
        clock=clock,
        new_id=new_id or uuid4,
        broker=broker,
        task_queue=task_queue or build_task_queue(settings, broker),
        notifier=notifier or build_notifier(settings),
        event_repo=event_repo,
        dead_letters=dead_letters or build_dead_letters(broker, failures),
        aggregates=aggregates,
        uow=shared_unit_of_work(event_repo, aggregates),
        api_keys=api_keys or (build_key_store(settings) if settings.auth == "required" else None),
        rate_limiter=rate_limiter or build_rate_limiter(settings, broker),
        backlog=backlog or build_backlog(settings, broker),
        cache=cache if cache is not None else build_cache(settings, clock),
        aggregation_jobs=aggregation_jobs or DramatiqAggregationJobs(broker),
        task_status=task_status,
        cursor_secret=cursor_secret or build_cursor_secret(settings),
    )
    return install_breakers(container)


def shared_unit_of_work(*stores: object) -> UnitOfWork | None:
    """The stores' database when they all write to the same one (SQLite), else None."""
    dbs = {id(getattr(s, "db", None)): getattr(s, "db", None) for s in stores}
    db = next(iter(dbs.values())) if len(dbs) == 1 else None
    return db if db is not None and hasattr(db, "atomic") else None  # type: ignore[return-value]


def build_broker(settings: Settings) -> dramatiq.Broker:
    from analytics.adapters.dramatiq_queue import build_broker as _build  # noqa: PLC0415

    return _build(settings)


def build_task_queue(settings: Settings, broker: dramatiq.Broker) -> TaskQueue:
    from analytics.adapters.dramatiq_queue import (  # noqa: PLC0415
        DirectQueue,
        GroupCommitQueue,
        RedisEnqueuer,
    )

    if not settings.group_commit:
        return DirectQueue(broker)
    return GroupCommitQueue(
        broker,
        max_events=settings.group_commit_max_events,
        timeout_s=settings.enqueue_timeout_s,
        send=RedisEnqueuer.for_broker(broker),  # None: broker.enqueue
    )


def _log_breaker_transition(breaker: Any, old: str, new: str) -> None:
    """One line per state change: WARNING when a breaker opens (a dependency failed
    ``ANALYTICS_BREAKER_FAILURE_THRESHOLD`` times in a row: answers are 503 or deferred
    until it closes), INFO for the trial and the recovery."""
    import structlog  # noqa: PLC0415

    level = "warning" if new == "open" else "info"
    getattr(structlog.get_logger("analytics.breakers"), level)(
        "circuit breaker " + ("opened" if new == "open" else new.replace("_", "-")),
        breaker=breaker.name, previous=str(old), state=str(new),
        retry_after_s=breaker.reset_timeout_s if new == "open" else None,
        # What failed: a missing table ("run analytics init") must not read as "down".
        error=breaker.last_error if new == "open" else None,
    )  # fmt: skip


#: The storage ports' methods that only read (``EventRepository``, ``AggregateStore``):
#: they go through the ``storage_reads`` breaker. Every other method, an adapter's own
#: included, goes through ``storage`` (the writes'), so one not named here errs on the
#: side of the writes.
STORAGE_READS = frozenset(
    {"get_many", "count", "iter_range", "search", "snapshot", "summarize", "breakdown"}
)


def install_breakers(container: Container) -> Container:
    """Wrap every outbound dependency in a circuit breaker (README, "Resilience").

    Decorator-adapters around the ports, composed here and only here: ``storage`` (the
    event and aggregate stores' writes and the unit of work share one breaker: one
    database) and ``storage_reads`` (their reads, :data:`STORAGE_READS`: a database that
    refuses writes may still answer reads, and a read's success closed the breaker the
    failing writes went through, each worker message then losing retries to it again, a
    QA drill), ``broker`` (the ingest queue),
    ``cache`` (Redis cache) and ``sns`` (notifier). The registry goes to
    ``extras["breakers"]`` for metrics and ``/health/detailed``. Idempotent.
    """
    s = container.settings
    if not s.breakers or "breakers" in container.extras:
        return container
    from analytics.adapters.circuit_breaker import BreakerRegistry, CircuitBreaker  # noqa: PLC0415
    from analytics.adapters.guarded import (  # noqa: PLC0415
        GuardedBacklog,
        GuardedCache,
        GuardedProxy,
        GuardedRateLimiter,
        GuardedTaskQueue,
        GuardedUnitOfWork,
    )
    from analytics.domain.errors import (  # noqa: PLC0415
        CacheCircuitOpen,
        CircuitOpen,
        QueueCircuitOpen,
        StorageCircuitOpen,
    )

    registry = BreakerRegistry()

    def breaker(name: str, on_open: type[CircuitOpen]) -> CircuitBreaker:
        cb = CircuitBreaker(
            name,
            failure_threshold=s.breaker_failure_threshold,
            reset_timeout_s=s.breaker_reset_timeout_s,
            on_open=on_open,
        )
        cb.add_listener(_log_breaker_transition)
        return registry.add(cb)

    storage = breaker("storage", StorageCircuitOpen)
    reads = (breaker("storage_reads", StorageCircuitOpen), STORAGE_READS)
    container.event_repo = GuardedProxy(container.event_repo, storage, reads=reads)  # type: ignore[assignment]
    if getattr(container, "aggregates", None) is not None:
        container.aggregates = GuardedProxy(container.aggregates, storage, reads=reads)  # type: ignore[attr-defined]
    if getattr(container, "uow", None) is not None:
        container.uow = GuardedUnitOfWork(container.uow, storage)  # type: ignore[attr-defined]
    broker_breaker = breaker("broker", QueueCircuitOpen)
    container.task_queue = GuardedTaskQueue(container.task_queue, broker_breaker)
    if getattr(container, "backlog", None) is not None:
        container.backlog = GuardedBacklog(container.backlog, broker_breaker)  # type: ignore[attr-defined]
    limiter = getattr(container, "rate_limiter", None)
    if limiter is not None and type(limiter).__name__ == "RedisRateLimiter":  # the broker's Redis
        container.rate_limiter = GuardedRateLimiter(limiter, broker_breaker)  # type: ignore[attr-defined]
    if getattr(container, "cache", None) is not None:
        container.cache = GuardedCache(container.cache, breaker("cache", CacheCircuitOpen))  # type: ignore[attr-defined]
    for holder in (container.extras, container.__dict__):
        notifier = holder.get("notifier")
        if notifier is not None and not isinstance(notifier, GuardedProxy):
            holder["notifier"] = GuardedProxy(notifier, breaker("sns", CircuitOpen))
    container.extras["breakers"] = registry
    checks = container.extras.setdefault("health_checks", {})
    if isinstance(checks, dict):

        def breakers_check() -> dict[str, object]:
            """For /health/detailed: every breaker; 'degraded' while any is not closed."""
            not_closed = registry.open_names()
            status = "degraded" if not_closed else "ok"
            return {"status": status, "not_closed": not_closed, "breakers": registry.snapshot()}

        checks["circuit_breakers"] = breakers_check
    return container


def query_deps(container: Container) -> QueryDeps:
    """The query side's dependencies (aggregations, dashboard, cache warm-up)."""
    from datetime import timedelta  # noqa: PLC0415

    from analytics.application.queries import QueryDeps, QueryLimits  # noqa: PLC0415

    s = container.settings
    assert container.aggregates is not None
    return QueryDeps(
        aggregates=container.aggregates,
        clock=container.clock,
        cache=container.cache,
        limits=QueryLimits(
            max_buckets=s.aggregation_max_buckets,
            dashboard_max_window=timedelta(days=s.dashboard_max_window_days),
            top_products=s.dashboard_top_products,
            series_minutes=s.dashboard_series_minutes,
            ttl_closed_s=s.cache_ttl_closed_s,
            ttl_today_s=s.cache_ttl_today_s,
            ttl_open_s=s.cache_ttl_open_s,
            ttl_dashboard_s=s.cache_ttl_dashboard_s,
        ),
    )
