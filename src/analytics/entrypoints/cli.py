"""The ``analytics`` command: serve (all-in-one), api, worker, scheduler; dlq, keys, init, check.

Bad arguments get a one-line message and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from analytics.adapters.dramatiq_queue import QUEUES
from analytics.settings import Settings, SettingsError


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


class CliFailure(Exception):
    """The command could not do its work (its store unreachable, an id unknown): one line,
    exit status 1, as ``dlq`` and ``check`` answer the same failures."""


def _queues(value: str) -> list[str]:
    names = [q.strip() for q in value.split(",") if q.strip()]
    unknown = [q for q in names if q not in QUEUES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown queue(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(QUEUES)}"
        )
    return names


def _actor(value: str) -> str:
    from analytics.entrypoints.policies import POLICIES  # noqa: PLC0415

    if value not in POLICIES:  # a typo filtered everything out and said "replayed 0"
        raise argparse.ArgumentTypeError(
            f"unknown actor {value!r}; choose from {', '.join(sorted(POLICIES))}"
        )
    return value


def _name(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("a key needs a name (who or what uses it)")
    return value.strip()


def _positive(value: str, high: int = 256) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if not 1 <= n <= high:
        raise argparse.ArgumentTypeError(f"{n} is out of range 1..{high}")
    return n


def _processes(value: str) -> int:
    """Processes: 1..64, as ANALYTICS_WORKER_PROCESSES / ANALYTICS_WEB_WORKERS (QA: the
    flag took 256 where the setting stops at 64)."""
    return _positive(value, 64)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="analytics", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run everything on the embedded default")
    serve.add_argument("--host", help="address to listen on (default ANALYTICS_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="API port (default ANALYTICS_PORT, 8083)")
    serve.add_argument("--data-dir", help="all state: events, Redis, keys (default ./data)")

    api = sub.add_parser("api", help="run the HTTP API under gunicorn")
    api.add_argument("--host", help="address to listen on (default ANALYTICS_HOST)")
    api.add_argument("--port", type=int, help="port (default ANALYTICS_PORT, 8083)")
    api.add_argument("--workers", type=_processes,
                     help="gunicorn worker processes (default ANALYTICS_WEB_WORKERS)")
    api.add_argument("--threads", type=_positive,
                     help="threads per worker process (default ANALYTICS_WEB_THREADS)")
    api.add_argument("--config", help="gunicorn settings file, e.g. config/gunicorn.conf.py")

    worker = sub.add_parser("worker", help="run Dramatiq workers for some queues")
    worker.add_argument("--queues", type=_queues, default=list(QUEUES),
                        help=f"comma-separated, from {','.join(QUEUES)} (default: all)")
    worker.add_argument("--processes", "--concurrency", type=_processes,
                        help="worker processes (default ANALYTICS_WORKER_PROCESSES); "
                        "--concurrency is the seed's Celery spelling")
    worker.add_argument("--threads", type=_positive,
                        help="threads per process (default ANALYTICS_WORKER_THREADS)")
    master = sub.add_parser(
        "dramatiq",
        help="internal: dramatiq's CLI with this service's logging, what a reload of "
        "`analytics worker` re-executes (start workers with `analytics worker`)",
    )
    master.add_argument("dramatiq_args", nargs=argparse.REMAINDER)
    sub.add_parser(
        "init", help="create the DynamoDB tables, indexes, TTL and SNS topic that are missing"
    )
    add_ops_commands(sub)
    add_keys_parser(sub)
    add_check_parser(sub)
    return parser


def _queue(value: str) -> str:
    if value not in QUEUES:
        choices = ", ".join(QUEUES)
        raise argparse.ArgumentTypeError(f"unknown queue {value!r}; choose from {choices}")
    return value


def add_ops_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``analytics dlq ...`` and ``analytics scheduler`` (README: "Operations")."""
    dlq = sub.add_parser("dlq", help="inspect, replay or purge dead-lettered messages")
    dsub = dlq.add_subparsers(dest="dlq_command", required=True)
    for name, text in (
        ("list", "list dead letters: what failed, why, how often"),
        ("show", "show one dead letter with its traceback"),
        ("replay", "put dead letters back on their queues"),
        ("purge", "delete dead letters for good"),
    ):
        p = dsub.add_parser(name, help=text)
        if name == "show":  # one letter: no filters (QA: its help offered them)
            p.add_argument("--id", action="append", default=[], dest="ids", metavar="ID",
                           required=True, help="the message id or a unique prefix of 6+ "
                           "characters (exactly one)")  # fmt: skip
        else:
            p.add_argument("--queue", type=_queue, help=f"only this queue: {', '.join(QUEUES)}")
            p.add_argument("--actor", type=_actor, help="only this actor, e.g. process_events")
            p.add_argument("--id", action="append", default=[], dest="ids", metavar="ID",
                           help="a message id or a unique prefix of 6+ characters; repeatable")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--data-dir", help="with no Redis configured: the Redis that "
                       "`analytics serve` runs for this data directory (default ./data)")
        if name in ("replay", "purge"):
            p.add_argument("--all", action="store_true", help="every dead letter of every queue")
    sub.add_parser("scheduler", help="run the periodic scheduler (one active; Redis lease)")


def add_keys_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    keys = sub.add_parser("keys", help="manage API keys (stored hashed: in the data dir, or "
                          "in Redis with REDIS_HOST set)")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    create = ksub.add_parser("create", help="create a key and print its secret once")
    create.add_argument("--name", type=_name, required=True,
                        help="who or what the key is for, e.g. web-frontend")
    create.add_argument("--scopes", type=_scopes, required=True,
                        help="comma-separated: ingest, read, admin (e.g. ingest,read)")
    create.add_argument("--rate-per-minute", type=_limit, help="default: the setting")
    create.add_argument("--burst", type=_limit, help="default: the setting")
    lst = ksub.add_parser("list", help="list keys (never their secrets)")
    revoke = ksub.add_parser("revoke", help="revoke a key by id (ak_<id>_...) or by the key")
    revoke.add_argument("key_id", help="the key's id, or the whole key")
    for p in (create, lst, revoke):
        p.add_argument("--data-dir", help="the data directory whose keys these are (default "
                       "./data: the one `analytics serve` runs with)")  # fmt: skip


def _scopes(value: str) -> tuple[str, ...]:
    from analytics.domain.auth import parse_scopes  # noqa: PLC0415

    try:
        return parse_scopes(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _limit(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if not 1 <= n <= 100_000_000:
        raise argparse.ArgumentTypeError(f"{n} is out of range 1..100000000")
    return n


def cmd_keys(args: argparse.Namespace) -> int:
    """``analytics keys create|list|revoke``; an unreachable store is one line, not a trace."""
    from analytics.domain.errors import AdapterError  # noqa: PLC0415

    try:
        return _keys_command(args)
    except AdapterError as exc:
        raise CliFailure(f"the key store is unavailable: {exc}") from None


def _keys_command(args: argparse.Namespace) -> int:
    from analytics.application import api_keys  # noqa: PLC0415
    from analytics.bootstrap import build_key_store, key_store_kind  # noqa: PLC0415
    from analytics.domain.clock import SystemClock  # noqa: PLC0415
    from analytics.domain.errors import NotFound  # noqa: PLC0415

    settings = load_settings(dict(os.environ), data_dir=args.data_dir)
    kind = key_store_kind(settings)
    if kind == "sqlite" and settings.key_store == "auto":
        from analytics.entrypoints.serve import serves_own_redis  # noqa: PLC0415

        theirs = serves_own_redis(settings.data_dir)
        if theirs is not None and theirs.keys_there:  # a key made here: one serve never reads
            raise CliError(theirs.refusal(settings.data_dir, "keeps its API keys in"))
    if kind == "memory":
        raise CliError("ANALYTICS_KEY_STORE=memory keeps no keys between processes")
    fresh = kind == "sqlite" and not Path(settings.keys_path).exists()
    if fresh and args.keys_command != "create":
        raise CliError(  # list/revoke would create an empty store and report nothing
            f"no key store at {str(settings.keys_path)!r}: is the service's data directory"
            " another one? Give it with --data-dir (or ANALYTICS_DATA_DIR)"
        )
    store = build_key_store(settings)
    clock = SystemClock()
    if fresh:
        # ... and keeps its keys there: one with REDIS_HOST set keeps them in that Redis
        # (ops QA: a key made here without it was a 401 on such an API).
        print(f"analytics keys: started a new key store at {str(settings.keys_path)!r}; a"
              " service only accepts the key if it runs with this data directory"
              " (--data-dir, ANALYTICS_DATA_DIR) and without REDIS_HOST: a service with"
              " REDIS_HOST set keeps its keys in that Redis, so run this command with the"
              " service's REDIS_HOST/REDIS_PORT/REDIS_DB", file=sys.stderr)  # fmt: skip
    if args.keys_command == "create":
        new = api_keys.create_key(
            args.name, args.scopes, store=store, clock=clock,
            rate_per_minute=args.rate_per_minute, burst=args.burst,
        )  # fmt: skip
        print(new.secret)
        print(
            f"created key {new.key.key_id} ({args.name}; scopes {','.join(new.key.scopes)}). "
            "The secret above is shown only this once.",
            file=sys.stderr,
        )
        return 0
    if args.keys_command == "list":
        keys = store.list()
        print(f"{'ID':12}  {'NAME':20}  {'SCOPES':18}  {'RATE/MIN':>9}  {'BURST':>7}  "
              f"{'CREATED':20}  STATUS")  # fmt: skip
        for k in keys:
            status = f"revoked {k.revoked_at:%Y-%m-%dT%H:%M:%SZ}" if k.revoked_at else "active"
            print(
                f"{k.key_id:12}  {k.name[:20]:20}  {','.join(k.scopes):18}  "
                f"{k.rate_per_minute or 'default':>9}  {k.burst or 'default':>7}  "
                f"{k.created_at:%Y-%m-%dT%H:%M:%SZ}  {status}"
            )
        return 0
    key_id = args.key_id
    parsed = key_id.split("_")
    if len(parsed) >= 3 and parsed[0] == "ak":  # a whole key was pasted: take its id
        key_id = parsed[1]
    try:
        api_keys.revoke_key(key_id, store=store, clock=clock)
    except NotFound as exc:
        raise CliFailure(str(exc)) from None
    print(f"revoked key {key_id}")
    return 0


def _seconds(value: str) -> float:
    try:
        n = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 < n <= 86_400:
        raise argparse.ArgumentTypeError(f"{n:g} is out of range (0, 86400]")
    return n


def add_check_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``analytics check worker|scheduler``: health checks for containers with no HTTP."""
    check = sub.add_parser("check", help="exit 0 when a worker or the scheduler is healthy")
    csub = check.add_subparsers(dest="component", required=True)
    w = csub.add_parser("worker", help="Redis answers and each queue has a fresh heartbeat")
    w.add_argument("--queues", type=_queues, default=list(QUEUES),
                   help="comma-separated queues that need a fresh heartbeat (default: all four)")
    w.add_argument("--max-age", type=_seconds, help="seconds (default: heartbeat_stale_s)")
    w.add_argument("--timeout", type=_seconds, default=3.0, help="Redis timeout, seconds")
    s = csub.add_parser("scheduler", help="Redis answers and a scheduler holds the lease")
    s.add_argument("--timeout", type=_seconds, default=3.0, help="Redis timeout, seconds")
    for p in (w, s):  # as dlq and keys take it (it only had ANALYTICS_DATA_DIR)
        p.add_argument("--data-dir", help="with no Redis configured: the Redis that "
                       "`analytics serve` runs for this data directory (default ./data)")  # fmt: skip


def load_settings(environ: dict[str, str], **overrides: object) -> Settings:
    env = dict(environ)
    names = {"host": "ANALYTICS_HOST", "port": "ANALYTICS_PORT", "data_dir": "ANALYTICS_DATA_DIR",
             "workers": "ANALYTICS_WEB_WORKERS", "threads": "ANALYTICS_WEB_THREADS"}  # fmt: skip
    for key, value in overrides.items():
        if value is not None:
            env[names[key]] = str(value)
    return Settings.from_env(env)


def writable_dir(path: Path, what: str) -> Path:
    """``path``, created if missing; one clear line when it cannot be made or written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"{what} {str(path)!r} cannot be created: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise CliError(f"{what} {str(path)!r} is not writable by this user")
    return path


def cmd_serve(args: argparse.Namespace) -> int:
    from analytics.entrypoints.serve import serve  # noqa: PLC0415

    settings = load_settings(dict(os.environ), host=args.host, port=args.port, data_dir=args.data_dir)
    writable_dir(Path(settings.data_dir), "the data directory (--data-dir, ANALYTICS_DATA_DIR)")
    preflight(settings)  # what the api and the worker would each refuse to start without
    preflight_tasks(settings)
    return serve(settings)


def cmd_api(args: argparse.Namespace) -> int:
    from analytics.entrypoints.wsgi import GunicornServer  # noqa: PLC0415

    settings = load_settings(
        dict(os.environ), host=args.host, port=args.port, workers=args.workers, threads=args.threads
    )
    settings = _redis_of_a_running_serve(settings, "api")
    preflight(settings)
    say_if_redis_is_silent(settings, "api")
    if args.config is not None:
        settings = settings.model_copy(update={"gunicorn_config": Path(args.config)})
    if settings.gunicorn_config is not None and not settings.gunicorn_config.is_file():
        raise CliError(f"gunicorn config file {str(settings.gunicorn_config)!r} does not exist")
    if not os.environ.get("LISTEN_FDS"):  # systemd hands gunicorn a socket it already holds
        from analytics.entrypoints.serve import check_port_free  # noqa: PLC0415

        check_port_free(settings.host, settings.port)  # not a dozen lines of bind retries
    settings = _with_metrics_dir(settings, "api")
    GunicornServer(settings).run()
    return 0


def _with_metrics_dir(settings: Settings, component: str) -> Settings:
    """Own a fresh prometheus multiprocess directory (set before prometheus_client loads)."""
    from analytics.entrypoints.metrics_dir import prepare_multiproc_dir  # noqa: PLC0415

    writable_dir(Path(settings.data_dir), "the data directory (ANALYTICS_DATA_DIR)")
    base = writable_dir(Path(settings.metrics_base), "the metrics directory")
    path = prepare_multiproc_dir(base / component)
    return settings.model_copy(update={"prometheus_multiproc_dir": path})


def _redis_of_a_running_serve(settings: Settings, command: str) -> Settings:
    """With no Redis configured: the Redis of the ``analytics serve`` running for this data
    directory (a worker or an API beside it joins it), else the default 127.0.0.1:6379,
    said in one line: a worker started there consumed whatever deployment that Redis
    holds under the same namespace, without a word (QA)."""
    from analytics.entrypoints.serve import with_running_serves_redis  # noqa: PLC0415

    writable_dir(Path(settings.data_dir), "the data directory (ANALYTICS_DATA_DIR)")
    joined = with_running_serves_redis(settings, required=False)
    if joined.redis_socket and not settings.redis_socket:
        os.environ["REDIS_SOCKET"] = joined.redis_socket  # the worker module reads the env
        os.environ["ANALYTICS_NAMESPACE"] = joined.namespace  # the serve's (serve.json)
    else:
        say_if_default_redis(settings, joined, command)
    return joined


def say_if_default_redis(settings: Settings, joined: Settings, command: str) -> None:
    """One line on stderr when neither a configured Redis nor a running serve's was found
    and ``command`` falls back to 127.0.0.1: whose Redis it then asks is not obvious (QA:
    ``check`` reported another deployment's heartbeats as its own, without a word)."""
    if joined.broker == "redis" and joined.redis_host is None and not joined.redis_socket:
        print(f"analytics {command}: no REDIS_HOST set and no analytics serve running for"
              f" {str(settings.data_dir)!r}: using the Redis at 127.0.0.1:{settings.redis_port}"
              f" (namespace {settings.namespace!r})", file=sys.stderr)  # fmt: skip


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _redis_of_a_running_serve(load_settings(dict(os.environ)), "worker")
    preflight_tasks(settings)
    preflight(settings)
    _with_metrics_dir(settings, "worker-" + "-".join(sorted(args.queues)))
    argv = [
        "analytics.entrypoints.worker_app",
        "--processes", str(args.processes or settings.worker_processes),
        "--threads", str(args.threads or settings.worker_threads),
        "--queues", *args.queues,
    ]  # fmt: skip
    argv += ["--worker-shutdown-timeout", str(int(settings.worker_shutdown_timeout_s * 1000))]
    return run_dramatiq(argv, settings)


def cmd_dramatiq(args: argparse.Namespace) -> int:
    from analytics.entrypoints.metrics_dir import MULTIPROC_ENV, adopt_multiproc_dir  # noqa: PLC0415

    if os.environ.get(MULTIPROC_ENV):  # a reload: this process is the owner now
        adopt_multiproc_dir(Path(os.environ[MULTIPROC_ENV]))
        reap_the_last_images_children()
    return run_dramatiq(list(args.dramatiq_args), load_settings(dict(os.environ)))


def reap_the_last_images_children(wait_s: float = 5.0) -> list[int]:
    """Wait for what the master forked before its reload and dramatiq did not: it joins
    its worker processes before re-executing, not its fork functions (the metrics
    exporter), which got the same SIGHUP. Unreaped they stayed zombies, one per reload
    (QA), and the new exporter could find its port still taken. One that does not stop
    in ``wait_s`` is killed (it only served metrics). Returns the pids reaped."""
    import psutil  # noqa: PLC0415

    reaped = []
    for child in psutil.Process().children():  # before this image forks anything
        try:
            child.wait(timeout=wait_s)
        except psutil.TimeoutExpired:
            child.kill()
            child.wait(timeout=wait_s)
        except psutil.NoSuchProcess:
            continue
        reaped.append(child.pid)
    return reaped


def run_dramatiq(argv: list[str], settings: Settings) -> int:
    """Run dramatiq's CLI in this process, as ``python -m dramatiq <argv>`` would.

    Dramatiq's master forks the worker processes, and each imports the worker module. The
    modules it needs are imported here first (what this configuration's adapters use, see
    ``bootstrap.adapter_modules``; nothing is built, connected or started), so every
    process starts with them loaded instead of importing them all over again, side by side
    on the same cores: about half of the worker's start-up. Signals reach dramatiq's own
    handlers (this is its master process).

    Logging is configured first, so the master's own lines (and those of the processes it
    forks, until the worker module configures them again) are JSON: dramatiq's
    ``basicConfig`` then finds a handler and adds none of its text format. A reload
    (SIGHUP, the recycler's) re-executes ``sys.argv``, which is set to
    ``python -m analytics dramatiq <argv>``: the same start as this one, where
    ``python -m dramatiq`` would come back with dramatiq's text lines and no preloading.
    """
    import functools  # noqa: PLC0415

    from dramatiq import cli as dramatiq_cli  # noqa: PLC0415

    from analytics.entrypoints.logs import configure_logging  # noqa: PLC0415
    from analytics.entrypoints.serve import stop_with  # noqa: PLC0415

    configure_logging(settings.log_level, settings.log_format)
    # Every process the master forks (worker processes, the metrics exporter) stops when
    # the master is killed outright: they kept consuming as orphans, and the supervisor's
    # restart then ran a second group beside them (and found the exporter's port taken).
    os.register_at_fork(after_in_child=functools.partial(stop_with, os.getpid()))
    preload_worker_modules(settings)
    args = dramatiq_cli.make_argument_parser().parse_args(argv)
    sys.argv = [sys.executable, "-m", "analytics", "dramatiq", *argv]  # what a reload runs
    return int(dramatiq_cli.main(args) or 0)


def preload_worker_modules(settings: Settings) -> list[str]:
    """Import what a worker process of this configuration imports, and nothing else: the
    actors and their middleware, and the adapters ``bootstrap`` picks for these settings
    (``bootstrap.adapter_modules``; boto3 only with DynamoDB or SNS). Imports only: no
    client, broker or thread is made. Returns the module names."""
    import importlib  # noqa: PLC0415

    from analytics.bootstrap import adapter_modules  # noqa: PLC0415

    modules = [
        "analytics.entrypoints.actors",
        "analytics.entrypoints.telemetry",
        "analytics.entrypoints.logs",
        "analytics.adapters.recycler",
        "analytics.adapters.worker_registry",
        "analytics.adapters.task_status_middleware",
        "prometheus_client",  # the library only: the metrics are made in each process
        "psutil",
        *adapter_modules(settings),
    ]
    for module in modules:
        importlib.import_module(module)
    return modules


def say_if_redis_is_silent(settings: Settings, command: str) -> None:
    """One line when the Redis the service needs does not answer at start. The service
    starts anyway (Redis may come later; ingest answers 503 and /health/detailed says
    down until then), but the API said nothing at all until the first 503 (QA)."""
    if settings.broker != "redis" and not settings.ops_redis:
        return
    import redis  # noqa: PLC0415

    from analytics.adapters.redis_clients import redis_client  # noqa: PLC0415

    try:
        redis_client(settings, timeout_s=1.0).ping()
    except (redis.RedisError, OSError) as exc:
        where = settings.redis_socket or f"{settings.redis_host or '127.0.0.1'}:{settings.redis_port}"
        print(f"analytics {command}: the Redis at {where} does not answer ({exc}); starting"
              " anyway: ingest answers 503 until it does", file=sys.stderr)  # fmt: skip


def preflight_tasks(settings: Settings) -> None:
    """Stop a start that runs tasks (serve, worker) with one clear line when a task's time
    limit is not above the longest a client call can block."""
    from analytics.entrypoints.policies import time_limits_too_short  # noqa: PLC0415

    short = time_limits_too_short(settings)
    if short:
        raise CliError(
            f"time limits at or below the longest client call ({settings.longest_client_block_s:g} s):"
            f" {', '.join(short)} ms; raise them with ANALYTICS_TIME_LIMITS_MS or shorten the calls"
            " (ANALYTICS_AWS_MAX_ATTEMPTS, ANALYTICS_AWS_CONNECT_TIMEOUT_S, _READ_TIMEOUT_S)"
        )


def preflight(settings: Settings) -> None:
    """Stop the start with one clear line when a table or topic is missing (``init`` fixes it)."""
    if settings.storage != "dynamodb" and not settings.sns_topic_arn:
        return
    from analytics.adapters.aws import ResourceMissing  # noqa: PLC0415
    from analytics.adapters.dynamodb_schema import check_resources  # noqa: PLC0415

    try:
        check_resources(settings)
    except ResourceMissing as exc:
        raise CliError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - unreachable endpoint, bad credentials...
        raise CliError(f"cannot check AWS resources: {exc}") from None


def cmd_init(args: argparse.Namespace) -> int:
    from analytics.adapters.dynamodb_schema import ensure_resources  # noqa: PLC0415

    settings = load_settings(dict(os.environ))
    if settings.storage != "dynamodb" and not settings.sns_topic_arn:
        print("analytics init: nothing to create (storage is not dynamodb, no SNS topic set)")
        return 0
    try:
        done = ensure_resources(settings)
    except Exception as exc:  # noqa: BLE001 - one clear line, not a traceback
        raise CliError(f"cannot create AWS resources: {exc}") from None
    for line in done or ["everything already exists; nothing to do"]:
        print(f"analytics init: {line}")
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    from analytics.entrypoints.ops_cli import run_dlq  # noqa: PLC0415
    from analytics.entrypoints.serve import with_running_serves_redis  # noqa: PLC0415

    settings = load_settings(dict(os.environ), data_dir=args.data_dir)
    return run_dlq(args, with_running_serves_redis(settings))


def cmd_scheduler(args: argparse.Namespace) -> int:
    from analytics.entrypoints.scheduler import run_scheduler  # noqa: PLC0415
    from analytics.entrypoints.serve import with_running_serves_redis  # noqa: PLC0415

    # Beside a running serve (no Redis configured), its Redis: a standby of serve's own
    # scheduler, not one of whatever deployment answers on 127.0.0.1:6379.
    own = load_settings(dict(os.environ))
    settings = with_running_serves_redis(own, required=False)
    say_if_default_redis(own, settings, "scheduler")
    return run_scheduler(settings)


COMMANDS = {
    "serve": cmd_serve,
    "api": cmd_api,
    "worker": cmd_worker,
    "dramatiq": cmd_dramatiq,
    "dlq": cmd_dlq,
    "scheduler": cmd_scheduler,
    "keys": cmd_keys,
    "init": cmd_init,
}


def cmd_check(args: argparse.Namespace) -> int:
    from analytics.entrypoints.health_check import run_check  # noqa: PLC0415
    from analytics.entrypoints.serve import with_running_serves_redis  # noqa: PLC0415

    settings = load_settings(dict(os.environ), data_dir=args.data_dir)
    joined = with_running_serves_redis(settings, required=False)
    say_if_default_redis(settings, joined, "check")
    return run_check(args, joined)


COMMANDS["check"] = cmd_check


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    owner_only_files()
    from analytics.settings import unknown_names  # noqa: PLC0415

    # A typo was ignored without a word (QA). Not for `dramatiq`: a worker group re-executes
    # itself as that on every reload and recycle, and `worker` said it at the start.
    for line in unknown_names(os.environ).values() if args.command != "dramatiq" else ():
        print(f"analytics {args.command}: warning: {line}", file=sys.stderr)
    try:
        return COMMANDS[args.command](args)
    except (SettingsError, CliError) as exc:
        print(f"analytics {args.command}: {exc}", file=sys.stderr)
        return 2
    except CliFailure as exc:
        print(f"analytics {args.command}: {exc}", file=sys.stderr)
        return 1


def owner_only_files() -> None:
    """Files and directories this process (and its children) create are its user's only:
    the event store, its log, Redis's append-only file hold users' events, and were
    world-readable under the usual umask 022 (QA). A stricter umask stays as it is."""
    os.umask(os.umask(0) | 0o077)


if __name__ == "__main__":
    raise SystemExit(main())
