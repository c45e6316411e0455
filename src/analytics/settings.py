"""Settings: one frozen object, read from the environment once at the entrypoint.

Nothing else reads ``os.environ``. Every bad value stops the start with a message that
names the variable, the value and what is expected.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class SettingsError(ValueError):
    """Raised with one line per bad environment variable."""


def _env_name(field: str) -> str:
    return "ANALYTICS_" + field.upper()


def _secret_names(cls: type[BaseModel]) -> set[str]:
    return {f.alias or _env_name(n) for n, f in cls.model_fields.items() if not f.repr}


class Settings(BaseModel):
    """All configuration. Env var names: ``ANALYTICS_<FIELD>`` unless an alias says otherwise."""

    model_config = ConfigDict(frozen=True, alias_generator=_env_name, populate_by_name=True)

    # --- where state lives -------------------------------------------------------------
    data_dir: Path = Field(Path("./data"), description="Directory for all embedded state.")
    storage: Literal["sqlite", "memory", "dynamodb"] = "sqlite"
    broker: Literal["redis", "rabbitmq", "stub"] = "redis"
    namespace: str = Field(
        "analytics",
        pattern=r"^[A-Za-z0-9_.:\-]{1,64}$",
        description="Prefix of every Redis key and queue this service owns.",
    )

    # --- Redis (the seed's granular form) ----------------------------------------------
    redis_host: str | None = Field(None, alias="REDIS_HOST")
    redis_port: int = Field(6379, alias="REDIS_PORT", ge=1, le=65535)
    redis_db: int = Field(0, alias="REDIS_DB", ge=0, le=15)
    redis_password: str | None = Field(None, alias="REDIS_PASSWORD", repr=False)
    redis_socket: str | None = Field(
        None, alias="REDIS_SOCKET", description="Unix socket path (used by the embedded Redis)."
    )
    redis_timeout_s: float = Field(5.0, gt=0, le=60)
    redis_appendfsync: Literal["always", "everysec"] = Field(
        "always",
        description="Embedded Redis: fsync the append-only file on every write (group commit"
        " makes that one fsync per group of events) or once a second.",
    )
    redis_maxmemory_mb: int = Field(
        0, ge=0, le=1_048_576,
        description="Embedded Redis: a memory cap in MiB (0: none). Full, it refuses writes"
        " (ingest answers 503) and never evicts a queued message.",
    )  # fmt: skip

    # --- RabbitMQ ----------------------------------------------------------------------
    rabbitmq_url: str = Field(  # it carries a password: never echoed (repr=False)
        "amqp://guest:guest@127.0.0.1:5672/%2F", alias="RABBITMQ_URL", repr=False
    )

    # --- AWS: DynamoDB storage, SNS notifications (README "DynamoDB table design") --------
    aws_region: str = Field("us-east-1", pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    aws_endpoint_url: str | None = Field(
        None, description="Endpoint for every AWS client (moto server, LocalStack); None: AWS."
    )
    dynamodb_endpoint_url: str | None = Field(
        None, description="Endpoint for DynamoDB only (DynamoDB Local); wins over aws_endpoint_url."
    )
    events_table: str = Field("analytics-events", pattern=r"^[A-Za-z0-9_.\-]{3,255}$")
    aggregates_table: str = Field("analytics-aggregates", pattern=r"^[A-Za-z0-9_.\-]{3,255}$")
    dynamodb_shards: int = Field(
        8, ge=1, le=64, description="Write shards per hot index partition; fixed per table."
    )
    aggregate_shards: int = Field(
        4, ge=1, le=64, description="Write shards of each day's aggregate counters; fixed."
    )
    dynamodb_max_read_days: int = Field(
        800, ge=31, le=36_600,
        description="Most UTC days one aggregation or dashboard read spans on DynamoDB (each"
        " day is a Query per grain and shard); longer ranges are a 400.",
    )  # fmt: skip
    aws_max_attempts: int = Field(
        3, ge=1, le=30,
        description="botocore tries per call in workers. Against a hung endpoint every try"
        " waits out connect + read timeout: the product, plus botocore's backoff, must stay"
        " under every task's time limit (checked at start).",
    )  # fmt: skip
    aws_retry_mode: Literal["standard", "adaptive"] = "adaptive"
    aws_connect_timeout_s: float = Field(3.0, gt=0, le=60)
    aws_read_timeout_s: float = Field(10.0, gt=0, le=120)
    aws_api_max_attempts: int = Field(
        2, ge=1, le=30,
        description="botocore tries per call in the API process: a reader waits at most this"
        " many connect + read timeouts for a 503, not the workers' budget.",
    )  # fmt: skip
    aws_api_read_timeout_s: float = Field(5.0, gt=0, le=120)
    batch_write_max_attempts: int = Field(
        8, ge=1, le=30, description="Tries for BatchWriteItem UnprocessedItems before failing."
    )
    batch_write_backoff_cap_s: float = Field(2.0, gt=0, le=60)
    sns_topic_arn: str | None = Field(
        None,
        pattern=r"^arn:aws[a-z\-]*:sns:[a-z0-9\-]+:\d{12}:[A-Za-z0-9_\-]{1,256}$",
        description="Topic for event notifications; unset: notifications off.",
    )
    sns_notify_event_types: str = Field(
        "purchase,signup",
        pattern=r"^\s*([a-z][a-z0-9_.:\-]*\s*(,\s*[a-z][a-z0-9_.:\-]*\s*)*)?$",
        description="Comma-separated event types published to the SNS topic.",
    )

    # --- HTTP --------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8083, ge=1, le=65535)
    web_workers: int = Field(2, ge=1, le=64)
    web_threads: int = Field(16, ge=1, le=256)
    max_body_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_batch_events: int = Field(500, ge=1, le=10_000)
    gunicorn_config: Path | None = Field(
        None,
        description="gunicorn settings file (config/gunicorn.conf.py) applied over the defaults;"
        " settings set explicitly in the environment still win.",
    )

    # --- ingest ------------------------------------------------------------------------
    enqueue_timeout_s: float = Field(
        5.0, gt=0, le=60, description="How long ingest waits for the broker before a 503."
    )
    group_commit: bool = Field(
        True, description="Share one broker round trip between concurrent requests."
    )
    group_commit_max_events: int = Field(2000, ge=1, le=50_000)
    ingest_lane: bool = Field(
        True,
        description="Serve the common single-event POST without Falcon's per-request"
        " machinery (same contract; anything unusual or failing still goes through Falcon).",
    )
    worker_group_commit: bool = Field(
        True, description="A worker process's threads share one store transaction per round."
    )

    # --- workers -----------------------------------------------------------------------
    worker_processes: int = Field(2, ge=1, le=64)
    # Twice dramatiq's default of 8: a worker waits on the store's writer lock, its fsync
    # and Redis, not on the CPU, and a process's threads share one commit per round
    # (SharedCommit), so more threads make bigger rounds. 2 x 16 against 2 x 8, draining
    # the same backlog (bench/worker_drain.py, alternating): 4-27 % more events/s after
    # the first stored event and 5-11 % less CPU per event in 3 of 4 pairs (README,
    # "Performance").
    worker_threads: int = Field(16, ge=1, le=256)
    heartbeat_timeout_s: float = Field(
        15.0, ge=1, le=3600, description="Redis broker: requeue a dead worker's messages after."
    )
    broker_maintenance_chance: int = Field(
        100_000,
        ge=1,
        le=1_000_000,
        description="Redis broker: broker calls per million that also requeue dead workers'"
        " messages (dramatiq's default of 1,000 can leave them for many minutes when idle).",
    )

    # --- security (README, "Security") ------------------------------------------------
    auth: Literal["required", "disabled"] = Field(
        "required", description="'disabled' turns API keys off: local experiments only."
    )
    key_store: Literal["auto", "sqlite", "redis", "memory"] = Field(
        "auto", description="auto: Redis when REDIS_HOST is set (shared), else SQLite."
    )
    api_keys: str | None = Field(
        None,
        repr=False,
        description="Keys from the environment (secret managers, containers): comma-separated "
        "'name:scope+scope:ak_<id>_<secret>'; they are valid besides the stored ones.",
    )
    metrics_auth: Literal["open", "required"] = Field(
        "open", description="'required': /metrics needs a key with the read scope."
    )
    metrics_event_types: int = Field(
        100, ge=0, le=10_000,
        description="Distinct event types an API process labels in "
        "analytics_events_accepted_total; later new ones count as event_type=\"_other\".",
    )  # fmt: skip
    rate_limit: Literal["auto", "redis", "memory", "disabled"] = Field(
        "auto", description="auto: Redis when the broker is Redis, else per-process memory."
    )
    rate_limit_per_minute: int = Field(
        60_000, ge=1, le=100_000_000, description="Per key: requests, or events on ingest."
    )
    rate_limit_burst: int = Field(5_000, ge=1, le=10_000_000)
    anon_rate_limit_per_minute: int = Field(
        300, ge=1, le=100_000_000, description="Per client address, requests without a key."
    )
    anon_rate_limit_burst: int = Field(60, ge=1, le=10_000_000)
    trust_forwarded_for: bool = Field(
        False, description="Take the client address from X-Forwarded-For (behind a proxy)."
    )
    overload_queue_depth: int = Field(
        20_000, ge=1, le=100_000_000, description="high_priority messages above which ingest is 503."
    )
    overload_retry_after_max_s: int = Field(300, ge=1, le=3600)
    max_decompressed_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024, description="Cap on gzip bodies."
    )
    cors_origins: str = Field(
        "", description="Comma-separated allowed origins ('*' for any); empty: no CORS."
    )
    hsts_seconds: int = Field(0, ge=0, le=2 * 365 * 86400, description="0: no HSTS header.")
    # --- aggregations, dashboard and their cache ---------------------------------------
    aggregation_max_buckets: int = Field(
        1000, ge=1, le=10_000, description="Most period buckets one aggregation query spans."
    )
    dashboard_max_window_days: int = Field(
        31, ge=1, le=366, description="Longest start/end window of the dashboard."
    )
    dashboard_top_products: int = Field(10, ge=1, le=100)
    dashboard_series_minutes: int = Field(60, ge=1, le=1440)
    cache_backend: Literal["auto", "redis", "memory", "none"] = Field(
        "auto", description="auto: the Redis cache when the broker is Redis, else none."
    )
    cache_ttl_closed_s: int = Field(86_400, ge=1, le=30 * 86_400)
    cache_ttl_today_s: int = Field(
        3600, ge=1, le=30 * 86_400,
        description="Closed buckets on the current UTC day (their day's version moves with"
        " every worker round); at most cache_ttl_closed_s.",
    )  # fmt: skip
    cache_ttl_open_s: int = Field(10, ge=1, le=3600)
    cache_ttl_dashboard_s: int = Field(5, ge=1, le=3600)
    cache_retry_after_s: float = Field(
        5.0, gt=0, le=300, description="After a Redis error, skip the cache this long."
    )
    cache_version_hold_s: float = Field(
        1.0, ge=0, le=60,
        description="Hold cache versions in-process between reads, dropped at once when Redis"
        " announces a change (client-side caching); at most this long. 0: read every time.",
    )  # fmt: skip

    # --- search and task status -------------------------------------------------------
    cursor_secret: str | None = Field(
        None,
        min_length=16,
        max_length=256,
        repr=False,
        description="HMAC key of search cursors. Unset: a random key kept in the data dir "
        "(set it explicitly when API processes on several hosts serve one store).",
    )
    task_status_ttl_s: int = Field(
        86_400, ge=60, le=30 * 86_400, description="How long a task status record is kept."
    )

    worker_max_tasks: int = Field(
        100_000, ge=0, le=10_000_000,
        description="Recycle worker processes after N tasks; 0: never. A recycle restarts every"
        " worker process of the master (seconds of boot), so N is large; a real leak is better"
        " caught by worker_max_rss_mb.",
    )  # fmt: skip
    worker_shutdown_timeout_s: float = Field(
        600.0, gt=0, le=3600, description="SIGTERM: how long running tasks may take to finish."
    )
    # Overrides of the per-actor retry table (entrypoints/policies.py); unset: the table.
    retry_max_retries: int | None = Field(None, ge=0, le=100)
    retry_min_backoff_ms: int | None = Field(None, ge=1, le=3_600_000)
    retry_max_backoff_ms: int | None = Field(None, ge=1, le=86_400_000)
    time_limits_ms: str = Field(
        "",
        description="Per-actor task time limits over the table, 'actor=ms,actor=ms'"
        " (e.g. generate_aggregations=3600000); each above the client timeouts.",
    )
    dead_message_ttl_s: int = Field(
        7 * 86400, ge=60, le=90 * 86400, description="Redis broker: how long dead letters stay."
    )

    # --- scheduler ---------------------------------------------------------------------
    retention_days: int = Field(90, ge=1, le=3650, description="Raw events older are purged.")
    scheduler_lease_s: float = Field(
        15.0, ge=0.5, le=600, description="Leader lease; a standby takes over within ~4/3 of it."
    )
    schedule_hourly_s: int = Field(3600, ge=1, le=86400, description="Hourly roll-up period.")
    schedule_daily_s: int = Field(86400, ge=1, le=7 * 86400, description="Daily roll-up period.")
    schedule_retention_s: int = Field(86400, ge=1, le=7 * 86400)
    schedule_dlq_check_s: int = Field(60, ge=1, le=86400)
    schedule_warmup_s: int = Field(60, ge=1, le=86400)
    schedule_delay_s: float = Field(
        300.0, ge=0, le=86400, description="Roll-ups run this long after a period closes."
    )
    scheduler_jobs: str = Field(
        "rollup_hourly,rollup_daily,retention,dlq_depth,cache_warmup",
        pattern=r"^[a-z_]+(,[a-z_]+)*$",
        description="Comma-separated scheduler jobs to run (README: Operations).",
    )
    schedule_catch_up_max: int = Field(
        48, ge=1, le=10_000, description="At most this many missed periods per job are caught up."
    )

    # --- resilience (README, "Resilience") ------------------------------------------
    breakers: bool = Field(
        True, description="Circuit breakers around storage, broker, cache and SNS."
    )
    breaker_failure_threshold: int = Field(
        5, ge=1, le=1000, description="Failures or timeouts in a row that open a breaker."
    )
    breaker_reset_timeout_s: float = Field(
        10.0, ge=0.05, le=3600, description="Cool-down of an open breaker before a trial call."
    )
    breaker_defer_max_s: float = Field(
        60.0, ge=1, le=86_400,
        description="Worker: longest delay of a message deferred because storage is open.",
    )  # fmt: skip
    sqlite_busy_timeout_s: float = Field(
        30.0, gt=0, le=600, description="How long a SQLite write waits for a lock before failing."
    )
    worker_max_rss_mb: int = Field(
        0, ge=0, le=1_048_576,
        description="Recycle a worker process whose resident memory passes this (MiB); 0: never.",
    )  # fmt: skip
    http_cache_public: bool = Field(
        False,
        description="Mark closed aggregation buckets 'public' (shared caches, CDNs) even though"
        " reading them needs a key. Off: 'private' whenever a key is required.",
    )
    http_cache_closed_max_age_s: int = Field(86_400, ge=0, le=31_536_000)
    http_cache_open_max_age_s: int = Field(10, ge=0, le=3600)
    http_cache_dashboard_max_age_s: int = Field(5, ge=0, le=3600)
    http_cache_static_max_age_s: int = Field(3600, ge=0, le=31_536_000)
    local_cache_entries: int = Field(
        2048, ge=0, le=1_000_000, description="In-process cache level (values LRU); 0: off."
    )
    local_cache_min_ttl_s: int = Field(
        3600, ge=1, le=31_536_000,
        description="Values cached at least this long (closed periods) that another process"
        " computed are kept in the in-process level when found in Redis.",
    )  # fmt: skip

    # --- logs --------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    # --- observability -----------------------------------------------------------------
    prometheus_multiproc_dir: Path | None = Field(
        None,
        alias="PROMETHEUS_MULTIPROC_DIR",
        description="prometheus-client multiprocess directory; set by `analytics api/worker`.",
    )
    metrics_dir: Path | None = Field(
        None, description="Parent of the per-component multiprocess dirs (data_dir/metrics)."
    )
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = Field(
        9191, ge=0, le=65535, description="Worker exporter port (0 = no exporter)."
    )
    metrics_sample_interval_s: float = Field(5.0, ge=0.5, le=300)
    worker_heartbeat_interval_s: float = Field(5.0, ge=0.1, le=300)
    heartbeat_stale_s: float = Field(
        60.0, ge=1, le=86_400, description="/health/detailed: a worker heartbeat older is stale."
    )
    scheduler_stale_s: float = Field(
        900.0, ge=1, le=86_400, description="/health/detailed: a scheduler run older is stale."
    )
    queue_depth_warn: int = Field(1000, ge=1, le=100_000_000)
    profile_slow_ms: int = Field(
        0, ge=0, le=600_000, description="Profile critical requests slower than this (0 = off)."
    )
    profile_dir: Path | None = Field(None, description="Profiles go here (data_dir/profiles).")
    profile_routes: str = Field(
        "/api/v1/analytics/events,/api/v1/analytics/events/batch,/analytics/events,"
        "/api/v1/analytics/events/search,/api/v1/analytics/dashboard/metrics,"
        "/api/v1/analytics/aggregations/{period}",
        description="Comma-separated route templates that count as critical.",
    )

    @field_validator("worker_max_rss_mb")
    @classmethod
    def _rss_floor(cls, value: int) -> int:
        if 0 < value < 16:
            raise ValueError("must be 0 (no limit) or at least 16 MiB (a Python worker needs more)")
        return value

    @field_validator("rabbitmq_url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        # pika takes any URL and fails at every connect, a traceback every 3 s (QA).
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme not in ("amqp", "amqps"):
            raise ValueError("must be an amqp:// or amqps:// URL (amqp://user:pass@host:5672/vhost)")
        return value

    @field_validator("scheduler_jobs")
    @classmethod
    def _known_jobs(cls, value: str) -> str:
        # Checked here, not only by the scheduler: serve restarted a scheduler that exited
        # 2 on an unknown job for ever, with the API and workers up (QA).
        unknown = sorted(set(value.split(",")) - set(SCHEDULER_JOBS))
        if unknown:
            raise ValueError(f"unknown job(s) {', '.join(unknown)}; choose from {', '.join(SCHEDULER_JOBS)}")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        # A browser sends its Origin as scheme://host[:port], lower case, no default port and
        # no path: an origin configured any other way never matched, without a word (QA).
        return ",".join(_origin(o) for o in value.split(",") if o.strip())

    @field_validator("aws_endpoint_url", "dynamodb_endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        # botocore's "Invalid endpoint: abc" named no setting (QA).
        from urllib.parse import urlsplit  # noqa: PLC0415

        if value is None:
            return None
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL, e.g. http://localhost:4566")
        return value

    @field_validator("time_limits_ms")
    @classmethod
    def _check_time_limits(cls, value: str) -> str:
        parse_time_limits(value)  # raises ValueError naming the bad entry
        return value

    @model_validator(mode="after")
    def _time_limits_above_client_timeouts(self) -> Settings:
        # Dramatiq's time limit is an asynchronous exception that cannot interrupt a
        # blocking socket call: the clients' own timeouts must fire first
        # (entrypoints/policies.py).
        floor_s = self.longest_client_block_s
        for actor, ms in self.time_limit_overrides.items():
            if ms <= floor_s * 1000:
                raise ValueError(
                    f"ANALYTICS_TIME_LIMITS_MS: {actor}={ms} must be above the longest client timeout"
                    f" a task can block on ({floor_s:g} s: Redis, SQLite busy, or with DynamoDB/SNS"
                    f" botocore's tries x (connect + read) plus its backoff)"
                )
        return self

    @property
    def longest_client_block_s(self) -> float:
        """How long one client call of a task can block before its own timeouts end it.
        botocore against a hung endpoint (a QA drill stopped moto with SIGSTOP) waits out
        connect + read on every try, with its backoff (at most 2^n s, capped at 20 s)
        between them: ten tries were 130 s, past process_events' 2 minutes."""
        floor_s = max(self.redis_timeout_s, self.sqlite_busy_timeout_s)
        if self.storage == "dynamodb" or self.sns_topic_arn:
            tries = self.aws_max_attempts
            backoff_s = sum(min(20.0, 2.0**i) for i in range(tries - 1))
            floor_s = max(floor_s, tries * (self.aws_connect_timeout_s + self.aws_read_timeout_s) + backoff_s)
        return floor_s

    @model_validator(mode="after")
    def _backoff_range(self) -> Settings:
        low, high = self.retry_min_backoff_ms, self.retry_max_backoff_ms
        if low is not None and high is not None and low > high:
            raise ValueError(
                f"ANALYTICS_RETRY_MIN_BACKOFF_MS ({low}) is above ANALYTICS_RETRY_MAX_BACKOFF_MS ({high})"
            )
        return self

    @model_validator(mode="after")
    def _topic_in_the_clients_region(self) -> Settings:
        # The SNS client works in aws_region; a topic ARN of another region made `init`
        # create the tables and a stray topic there, and only then say the topic was missing.
        if self.sns_topic_arn:
            region = self.sns_topic_arn.split(":")[3]
            if region != self.aws_region:
                raise ValueError(
                    f"ANALYTICS_SNS_TOPIC_ARN is in region {region}, ANALYTICS_AWS_REGION is"
                    f" {self.aws_region}: the clients work in one region; make them agree"
                )
        return self

    @property
    def time_limit_overrides(self) -> dict[str, int]:
        return parse_time_limits(self.time_limits_ms)

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "events.sqlite3"

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: str | None) -> str | None:
        from analytics.domain.auth import parse_static_keys  # noqa: PLC0415

        if value:
            parse_static_keys(value)  # raises ValueError naming the bad entry
        return value

    @property
    def keys_path(self) -> Path:
        return self.data_dir / "keys.sqlite3"

    @property
    def cors_origin_list(self) -> tuple[str, ...]:
        return tuple(o for o in self.cors_origins.split(",") if o)

    @property
    def metrics_base(self) -> Path:
        return self.metrics_dir or default_metrics_base(self.data_dir)

    @property
    def profile_path(self) -> Path:
        return self.profile_dir or self.data_dir / "profiles"

    @property
    def notify_event_types(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.sns_notify_event_types.split(",") if t.strip())

    @property
    def sns_topic_name(self) -> str | None:
        return self.sns_topic_arn.rsplit(":", 1)[1] if self.sns_topic_arn else None

    @property
    def cursor_secret_path(self) -> Path:
        return self.data_dir / "cursor_secret"

    @property
    def ops_redis(self) -> bool:
        """Is there a Redis for the operations records (scheduler lease and ledger, worker
        heartbeats, the actor registry)? The broker's own, or one configured with
        ``REDIS_HOST``/``REDIS_SOCKET`` beside another broker (RabbitMQ)."""
        return self.broker == "redis" or self.redis_host is not None or bool(self.redis_socket)

    @property
    def redis_embedded(self) -> bool:
        return self.redis_host is None and self.redis_socket is not None

    def redis_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``redis.Redis`` from the granular settings."""
        common: dict[str, object] = {
            "db": self.redis_db,
            "password": self.redis_password,
            "socket_timeout": self.redis_timeout_s,
            "socket_connect_timeout": self.redis_timeout_s,
        }
        if self.redis_host is None and self.redis_socket:
            return {"unix_socket_path": self.redis_socket, **common}
        return {"host": self.redis_host or "127.0.0.1", "port": self.redis_port, **common}

    def for_api(self) -> Settings:
        """These settings as the API process uses them: its AWS calls answer a waiting
        client, so they get the API's budget (``aws_api_*``). A worker's call may ride out
        ten tries, a request held that long is a hung page (a hung DynamoDB held reads for
        65-106 s before the 503)."""
        return self.model_copy(
            update={
                "aws_max_attempts": self.aws_api_max_attempts,
                "aws_read_timeout_s": self.aws_api_read_timeout_s,
            }
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        names = env_names()
        data = {k: v for k, v in environ.items() if k in names and v != ""}
        if environ.get("REDIS_URL"):  # the seed's old form, still understood
            both = sorted({"REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_SOCKET"} & set(data))
            if both:
                raise SettingsError(
                    f"invalid configuration:\n  REDIS_URL and {', '.join(both)} are both set:"
                    " keep one form (REDIS_HOST, REDIS_PORT and REDIS_DB are the current one)"
                )
            url_fields = _redis_url_fields(environ["REDIS_URL"])
            if "REDIS_PASSWORD" in data:
                url_fields.pop("REDIS_PASSWORD", None)
            data.update(url_fields)
        try:
            settings = cls.model_validate(data)
        except ValidationError as exc:
            lines = []
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"])
                if not loc:  # a rule over several settings: its message names them
                    lines.append(err["msg"].removeprefix("Value error, "))
                    continue
                got = f" (got {err['input']!r})" if isinstance(err.get("input"), str) else ""
                if loc in _secret_names(cls):  # never echo a secret into logs
                    got = ""
                lines.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}{got}")
            raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines)) from None
        if settings.broker == "rabbitmq":
            try:
                import pika  # noqa: F401, PLC0415 - an optional extra
            except ImportError:
                raise SettingsError(
                    "ANALYTICS_BROKER=rabbitmq needs the AMQP client, an optional extra:"
                    " pip install 'analytics-service[rabbitmq]' (from a checkout:"
                    " pip install -e '.[rabbitmq]')"
                ) from None
        return settings

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        out: dict[str, str] = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if value is not None:
                out[field.alias or _env_name(name)] = str(value)
        return out


#: The scheduler's jobs (``entrypoints/scheduler.build_jobs`` defines what each does).
SCHEDULER_JOBS = ("rollup_hourly", "rollup_daily", "retention", "dlq_depth", "cache_warmup")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(text: str) -> str:
    """One configured CORS origin as browsers write their ``Origin`` header, or ``*``."""
    from urllib.parse import urlsplit  # noqa: PLC0415

    text = text.strip().rstrip("/")
    if text == "*":
        return text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{text!r} is not an origin: write scheme://host[:port], e.g. "
                         "https://app.example.com, or * for any")  # fmt: skip
    if parts.path or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{text!r} is not an origin: no path, query or user part "
                         f"(the origin of that page is {parts.scheme}://{parts.netloc.split('@')[-1]})")  # fmt: skip
    scheme = parts.scheme.lower()
    host = parts.hostname
    if "*" in host:  # compared exactly: a pattern would never match (review)
        raise ValueError(f"{text!r}: wildcards are not supported; list each origin")
    try:  # browsers send a non-ASCII host in its ASCII (punycode) form (review)
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"{text!r} is not an origin: its host is not a valid name") from None
    host = host if ":" not in host else f"[{host}]"
    keep_port = port is not None and port != _DEFAULT_PORTS[scheme]
    return f"{scheme}://{host}" + (f":{port}" if keep_port else "")


def env_names() -> set[str]:
    """The environment variable of every setting (``ANALYTICS_<NAME>``, or its alias)."""
    return {f.alias or _env_name(n) for n, f in Settings.model_fields.items()}


def unknown_names(environ: Mapping[str, str]) -> dict[str, str]:
    """Each ``ANALYTICS_*`` variable that is no setting (a misspelt one was silently
    ignored, QA), with a line that names the setting it most likely means."""
    import difflib  # noqa: PLC0415

    names = sorted(env_names())
    suffixes = [n.removeprefix("ANALYTICS_") for n in names if n.startswith("ANALYTICS_")]
    out = {}
    for name in sorted(environ):
        if name.startswith("ANALYTICS_") and name not in names and name not in NOT_SETTINGS:
            # Compared without the shared prefix, which made any such name "close" to one.
            bare = name.removeprefix("ANALYTICS_")
            close = difflib.get_close_matches(bare, suffixes, n=1)
            hint = (f" (did you mean {bare}?)" if bare in names  # RABBITMQ_URL, REDIS_HOST
                    else f" (did you mean ANALYTICS_{close[0]}?)" if close else "")  # fmt: skip
            out[name] = f"{name} is not a setting and is ignored{hint}"
    return out


#: ANALYTICS_* variables that are not settings but are used on purpose: the README's
#: shell variable for the development key, and the variables tools of this repository read.
NOT_SETTINGS = frozenset({"ANALYTICS_KEY", "ANALYTICS_URL"})


def _redis_url_fields(url: str) -> dict[str, str]:
    """The seed's old ``REDIS_URL`` (``redis://[:password@]host[:port][/db]``) as the
    granular variables that replaced it, so a configuration written for the old version
    keeps its Redis instead of silently falling back to the default one."""
    from urllib.parse import unquote, urlsplit  # noqa: PLC0415

    # The value is not echoed: it may hold the password.
    bad = "invalid configuration:\n  REDIS_URL: not redis://[:password@]host[:port][/db]"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise SettingsError(bad) from None
    db = parts.path.strip("/")
    if parts.scheme != "redis" or not parts.hostname or (db and not db.isdigit()):
        raise SettingsError(bad + " (use REDIS_HOST, REDIS_PORT and REDIS_DB for anything else)")
    fields = {"REDIS_HOST": parts.hostname, "REDIS_PORT": str(port or 6379), "REDIS_DB": db or "0"}
    if parts.password:
        fields["REDIS_PASSWORD"] = unquote(parts.password)
    return fields


def parse_time_limits(value: str) -> dict[str, int]:
    """``"actor=ms,actor=ms"`` -> ``{actor: ms}``; actors of the policy table only."""
    from analytics.entrypoints.policies import POLICIES  # noqa: PLC0415 - names only

    out: dict[str, int] = {}
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        actor, sep, ms = entry.partition("=")
        actor, ms = actor.strip(), ms.strip()
        if not sep or not ms.isdigit():
            raise ValueError(f"{entry!r} is not actor=milliseconds")
        if actor not in POLICIES:
            raise ValueError(f"unknown actor {actor!r} (known: {', '.join(POLICIES)})")
        if not 1_000 <= int(ms) <= 86_400_000:
            raise ValueError(f"{entry!r}: between 1000 ms and 24 h")
        out[actor] = int(ms)
    return out


#: A memory-backed filesystem, where the system has one.
SHARED_MEMORY_DIR = Path("/dev/shm")  # noqa: S108 - a directory per data dir, owner-only


def default_metrics_base(data_dir: Path, shm: Path = SHARED_MEMORY_DIR) -> Path:
    """Where the prometheus multiprocess directories go unless ``ANALYTICS_METRICS_DIR``
    says: in memory (``/dev/shm/analytics-metrics-<digest of the data dir>``), else
    ``<data dir>/metrics``. prometheus-client memory-maps its files, and a write to a new
    page of one on a full disk kills the process with SIGBUS: with the data disk full, every
    gunicorn worker died at its first metric and was replaced, over and over, and clients
    met reset connections instead of the 503 a full disk gets (QA)."""
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        digest = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:16]
        return shm / f"analytics-metrics-{digest}"
    return Path(data_dir) / "metrics"
