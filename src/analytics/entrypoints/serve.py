"""``analytics serve``: the whole service on one machine with no external server.

Starts a private Redis (append-only) under the data directory unless ``REDIS_HOST`` is
set, then the workers for every queue and the API, and supervises them: a child that dies
is restarted (the embedded Redis too, from its append-only file); SIGINT/SIGTERM/SIGHUP
stops everything in order (API, workers and scheduler, then Redis).

The children run in sessions of their own: Ctrl-C in a terminal sends SIGINT to the whole
foreground process group, which reached gunicorn's workers (a quick exit, cutting the
requests in flight), dramatiq's worker processes (stopping, then killed by their master's
SIGTERM right after: tasks cut) and Redis (gone while the workers still had acks to send)
all at once. Now only ``serve`` gets it: it stops the API, the workers and the scheduler
gracefully (SIGTERM, then waits for them), and Redis after them.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analytics.adapters.dramatiq_queue import QUEUES
from analytics.adapters.embedded_redis import RedisServerProcess
from analytics.settings import Settings


def _child(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "analytics", *args], env=env, start_new_session=True,
        preexec_fn=stop_with_parent(),  # noqa: PLW1509 - serve has no other thread
    )  # fmt: skip


def stop_with_parent() -> Callable[[], None]:
    """What a child of this process runs before its program: see ``stop_with``."""
    return functools.partial(stop_with, os.getpid())


def stop_with(parent: int) -> None:
    """In a child, before it runs: SIGTERM when its parent dies (Linux ``prctl``
    ``PR_SET_PDEATHSIG``). In sessions of their own the children no longer share the
    terminal's signals, so a ``serve`` killed outright (SIGKILL, the OOM killer) would
    leave them running, holding the port and the Redis socket; this way they stop, each
    gracefully. The worker's master uses it for the processes it forks. Elsewhere (not
    Linux) it does nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes  # noqa: PLC0415

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the prctl: nobody will send the signal
        os.kill(os.getpid(), signal.SIGTERM)


def first_start_key(settings: Settings) -> str | None:
    """The development key made on the very first start (None on later starts)."""
    from analytics.bootstrap import build_key_store, key_store_kind  # noqa: PLC0415

    if settings.auth != "required" or key_store_kind(settings) == "memory":
        return None
    from analytics.application.api_keys import ensure_dev_key  # noqa: PLC0415
    from analytics.domain.clock import SystemClock  # noqa: PLC0415

    new = ensure_dev_key(store=build_key_store(settings), clock=SystemClock())
    return new.secret if new else None


def banner(settings: Settings, dev_key: str | None) -> str:
    """What ``serve`` prints at start: the URL, a curl line for a first event, and the
    development key on the first start. Keys live in this data directory, so the key
    commands it shows name it (a key made in another one would answer 401)."""
    url = f"http://{settings.host}:{settings.port}"
    data_dir = shlex.quote(str(settings.data_dir))
    keys = f"analytics keys create --name me --scopes ingest,read,admin --data-dir {data_dir}"
    from analytics.bootstrap import key_store_kind  # noqa: PLC0415

    if key_store_kind(settings) == "redis" and settings.redis_host is not None:  # keys there
        password = " REDIS_PASSWORD=<its password>" if settings.redis_password else ""
        keys = (f"REDIS_HOST={shlex.quote(settings.redis_host)} REDIS_PORT={settings.redis_port}"
                f" REDIS_DB={settings.redis_db}{password} {keys}")  # fmt: skip
    auth_header = ""
    if settings.auth == "required":
        shown = dev_key or f"<your key: {keys}>"
        auth_header = f"    -H 'Authorization: Bearer {shown}' \\\n"
    text = (
        f"analytics: serving on {url} (data in {settings.data_dir})\n"
        f"  first event:\n"
        f"  curl -s -X POST {url}/api/v1/analytics/events -H 'Content-Type: application/json' \\\n"
        f"{auth_header}"
        f"    -d '{{\"event_type\":\"page_view\",\"user_id\":\"user123\",\"session_id\":\"sess_456\"}}'"
    )
    if dev_key:
        text += (
            f"\nanalytics: first start: created a development API key with every scope\n"
            f"  export ANALYTICS_KEY={dev_key}\n"
            f"  send it as -H \"Authorization: Bearer $ANALYTICS_KEY\" (the README's examples"
            f" do;\n  shown only this once; more with `{keys}`)"
        )
    return text


def embedded_redis_socket(data_dir: Path) -> Path:
    """Where the Redis that ``serve`` runs for ``data_dir`` listens (a Unix socket)."""
    return Path(data_dir) / "redis.sock"


def with_running_serves_redis(settings: Settings, *, required: bool = True) -> Settings:
    """With no Redis configured (the embedded default), the Redis that ``analytics serve``
    runs for this data directory: an operator's command (``analytics dlq``) then sees the
    service's dead letters, not whatever answers on 127.0.0.1:6379. When that ``serve`` is
    not running: CliError, or (``required=False``: ``check``, ``scheduler``) the settings
    as they are."""
    if settings.broker != "redis" or settings.redis_host is not None or settings.redis_socket:
        return settings
    sock = embedded_redis_socket(settings.data_dir)
    from analytics.entrypoints.cli import CliError  # noqa: PLC0415

    theirs = None if sock.is_socket() else serves_own_redis(settings.data_dir)
    if theirs is not None and (theirs.host, theirs.port, theirs.db) != (
        "127.0.0.1", settings.redis_port, settings.redis_db  # the default, which is right
    ):
        raise CliError(theirs.refusal(settings.data_dir, "uses"))
    if not sock.is_socket() and not required:
        return settings  # the default Redis, as `analytics worker` and `api` use

    if not sock.is_socket():
        # Falling back to 127.0.0.1:6379 read (and could replay or purge) some other
        # deployment's dead letters, for a mistyped --data-dir or a stopped serve.
        raise CliError(
            f"no analytics serve is running for the data directory {str(settings.data_dir)!r}"
            " (its Redis keeps the dead letters): start it, pass its --data-dir, or set"
            " REDIS_HOST for a Redis of your own"
        )
    update: dict[str, object] = {"redis_socket": str(sock)}
    theirs = serve_namespace(settings.data_dir)
    if theirs is not None and theirs != settings.namespace:
        # Under another namespace, `dlq list` said "no dead letters" beside the serve's
        # and a joining worker consumed nothing (QA). Unset: the serve's; set: a mistake.
        if "namespace" in settings.model_fields_set:
            raise CliError(
                f"the analytics serve of {str(settings.data_dir)!r} runs with"
                f" ANALYTICS_NAMESPACE={theirs!r}, not {settings.namespace!r}: unset it, or"
                " set the serve's"
            )
        update["namespace"] = theirs
    return settings.model_copy(update=update)


def serve_info(data_dir: Path) -> dict[str, Any] | None:
    """What the serve running for ``data_dir`` wrote to ``serve.json``: its namespace, pid,
    where its API keys live (``key_store``) and, when it uses a Redis of the operator's,
    that Redis (``redis``: host, port, db; never a password).

    Only while that serve holds the data directory (``serve.lock`` names its pid): the
    file outlives it, and a serve of an earlier version, which writes none, then ran
    under another namespace (a rollback): commands took the stale one (upgrade QA)."""
    try:
        info = json.loads((Path(data_dir) / SERVE_FILE).read_text())
        holder = _serve_lock_holder(Path(data_dir) / "serve.lock")
    except (OSError, ValueError, IndexError):
        return None
    if not isinstance(info, dict) or holder is None or info.get("pid") != holder:
        return None
    return info


def serve_namespace(data_dir: Path) -> str | None:
    """The namespace of the serve running for ``data_dir``, if it says (:func:`serve_info`)."""
    value = (serve_info(data_dir) or {}).get("namespace")
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True, slots=True)
class ServesRedis:
    """The operator's Redis (REDIS_HOST) that a running serve uses, from ``serve.json``."""

    pid: int
    host: str
    port: int
    db: int
    keys_there: bool  # its API keys too (ANALYTICS_KEY_STORE resolved to redis)

    def refusal(self, data_dir: Path, what: str) -> str:
        """One line telling a command run without REDIS_HOST which Redis to name."""
        return (f"the analytics serve of {str(data_dir)!r} (pid {self.pid}) {what} the Redis at"
                f" {self.host}:{self.port} db {self.db}: run this command with"
                f" REDIS_HOST={shlex.quote(self.host)} REDIS_PORT={self.port} REDIS_DB={self.db}"
                " (and REDIS_PASSWORD if it has one)")  # fmt: skip


def serves_own_redis(data_dir: Path) -> ServesRedis | None:
    """The Redis of the operator's that the serve running for ``data_dir`` uses, if any."""
    info = serve_info(data_dir) or {}
    redis = info.get("redis")
    if not isinstance(redis, dict):
        return None
    return ServesRedis(int(info["pid"]), str(redis.get("host")), int(redis.get("port", 0)),
                       int(redis.get("db", 0)), info.get("key_store") == "redis")  # fmt: skip


def write_serve_file(data_dir: Path, settings: Settings) -> None:
    """``serve.json`` for the commands that join this serve; whole or not at all for a
    reader (written aside, then renamed)."""
    from analytics.bootstrap import key_store_kind  # noqa: PLC0415

    info: dict[str, Any] = {"namespace": settings.namespace, "pid": os.getpid(),
                            "key_store": key_store_kind(settings)}  # fmt: skip
    if settings.redis_host is not None:
        info["redis"] = {"host": settings.redis_host, "port": settings.redis_port,
                         "db": settings.redis_db}  # fmt: skip
    tmp = data_dir / (SERVE_FILE + ".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(data_dir / SERVE_FILE)


#: What a running serve tells the commands that join its Redis (``dlq``, ``worker``, ...).
SERVE_FILE = "serve.json"


def _serve_lock_holder(path: Path) -> int | None:
    """The pid ``serve.lock`` names while a serve holds its lock, else None (a lock we
    could take ourselves is nobody's: the file only says who held it last)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return int(os.pread(fd, 32, 0).split()[0])
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def claim_data_dir(data_dir: Path) -> int:
    """An exclusive lock on ``<data_dir>/serve.lock`` for as long as this process lives
    (the returned descriptor stays open), or CliError naming the holder.

    A second ``serve`` on the same directory started a second Redis on the same socket
    and append-only file, and workers that read from whichever Redis answered: accepted
    events could be stranded in the first one's memory."""
    from analytics.entrypoints.cli import CliError  # noqa: PLC0415

    fd = os.open(data_dir / "serve.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise CliError(
            f"another analytics serve (pid {holder}) is running with the data directory "
            f"{str(data_dir)!r}; stop it first, or choose another with --data-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def check_port_free(
    host: str, port: int, *, data_dir: Path | None = None, wait_s: float = 25.0
) -> None:
    """CliError when something already listens on the API's address (gunicorn would
    retry and exit, and ``serve`` restart it, forever). When what listens is the API of
    an earlier ``serve`` of ``data_dir`` (killed outright: its gunicorn still answers the
    requests in flight, up to its 20 s graceful timeout), wait for it, up to ``wait_s``:
    a supervisor's immediate restart exited 2 and left the service down (QA)."""
    from analytics.entrypoints.cli import CliError  # noqa: PLC0415

    deadline = None
    previous: dict[int, Any] = {}

    def stopped(signum: int, frame: object) -> None:  # said, not a silent death
        raise CliError(f"stopped by {signal.Signals(signum).name} while waiting for {host}:{port}")

    try:
        while True:
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
                try:
                    probe.bind((host, port))
                    return
                except OSError as exc:
                    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
                        # The host, not the port (QA: "choose another with --port").
                        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror} (the"
                                       " address is not this machine's: check --host or"
                                       " ANALYTICS_HOST)") from None  # fmt: skip
                    error = exc.strerror
            holders = _earlier_api_of(data_dir, port) if data_dir is not None else []
            # Once waiting, a listener that cannot be named any more is the predecessor's
            # mid-exit (its processes' fds closing, /proc unreadable): the wait goes on, to
            # its deadline (CI: refused with "Address already in use" half-way through).
            if (deadline is None and not holders) or (
                deadline is not None and time.monotonic() > deadline
            ):
                raise CliError(
                    f"cannot listen on {host}:{port}: {error} (choose another with --port)"
                )
            if deadline is None:
                deadline = time.monotonic() + wait_s
                for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    previous[signum] = signal.signal(signum, stopped)
                print(f"analytics: {host}:{port} is still held by the API of the last serve of"
                      f" this data directory (pid {min(holders)}), finishing its requests;"
                      f" waiting up to {wait_s:g} s", flush=True)  # fmt: skip
            time.sleep(0.25)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _earlier_api_of(data_dir: Path, port: int) -> list[int]:
    """The pids of ``analytics`` processes of ``data_dir`` listening on ``port``."""
    import psutil  # noqa: PLC0415

    pids = []
    try:
        listening = [c for c in psutil.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port]  # fmt: skip
    except psutil.Error:
        return []
    for conn in listening:
        if conn.pid is None or conn.pid == os.getpid():  # Process(None) is this process
            continue
        try:
            proc = psutil.Process(conn.pid)
            ours = "analytics" in " ".join(proc.cmdline())
            if ours and proc.environ().get("ANALYTICS_DATA_DIR") == str(data_dir):
                pids.append(proc.pid)
        except psutil.Error:  # gone, or unreadable
            continue
    return pids


class RestartPolicy:
    """When ``serve`` starts a child again: at once (after a second) when it had run for a
    while, later each time it exits soon after its start (1, 2, 4, 8, then every 10 s),
    as systemd's and Kubernetes' back-off do. A child that cannot start (a table deleted
    under a running service, a port taken) was restarted every two seconds forever, each
    time with its start-up lines and a traceback; now the log says when the next try is.
    """

    def __init__(self, *, settled_s: float = 30.0, first_s: float = 1.0, max_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.settled_s, self.first_s, self.max_s, self.clock = settled_s, first_s, max_s, clock
        self._started: dict[str, float] = {}
        self._quick: dict[str, int] = {}

    def started(self, name: str) -> None:
        self._started[name] = self.clock()

    def exited(self, name: str) -> float:
        """The child ``name`` exited: seconds to wait before starting it again."""
        ran = self.clock() - self._started.get(name, -math.inf)
        quick = self._quick.get(name, 0) + 1 if ran < self.settled_s else 0
        self._quick[name] = quick
        return min(self.max_s, self.first_s * 2 ** max(quick - 1, 0))


class RedisLogRelay:
    """What the embedded Redis warns about, on ``serve``'s own output.

    Redis writes why it stopped or what it repaired only to ``redis/redis.log`` (a short
    write to its append-only file on a full disk; an AOF cut short and truncated on load,
    losing its last command): ``serve`` said "redis exited with 1" and nothing else (QA).
    Its warning lines (``#``) since the last look are relayed, without the ones every
    start and stop writes.
    """

    ROUTINE = (
        "Redis is starting", "Redis version=", "Configuration loaded", "Server initialized",
        "WARNING Memory overcommit", "WARNING overcommit_memory", "User requested shutdown",
        "Redis is now ready to exit", "WARNING: The TCP backlog", "Received SIGTERM",
        # The append-only file's RDB preamble: its count, not the tail's, read as a loss.
        "Done loading RDB",
    )  # fmt: skip

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def warnings(self) -> list[str]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read(1 << 20)
        except OSError:
            return []
        end = chunk.rfind(b"\n") + 1  # whole lines only; the rest next time
        self.offset += end
        found = []
        for line in chunk[:end].decode(errors="replace").splitlines():
            _, sep, text = line.partition(" # ")
            if sep and not any(r in text for r in self.ROUTINE):
                found.append(text.strip())
        return found

    def relay(self) -> None:
        for text in self.warnings():
            print(f"analytics: redis: {text}", flush=True)


def disk_full_notice(path: Path, threshold: int = 16 * 1024 * 1024) -> str | None:
    """One line when the filesystem of ``path`` has (almost) no space left, else None: the
    cause of a child's exit that its own last words may not name (a log on that disk is
    cut short too)."""
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return None
    if free >= threshold:
        return None
    return (f"analytics: the data directory's disk is full ({free} bytes free at {path}):"
            " the embedded Redis cannot append and the workers cannot store; free space and"
            " the service recovers on its own (nothing it answered 202 for is lost)")  # fmt: skip


def serve(settings: Settings) -> int:
    data_dir = Path(settings.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    claim_data_dir(data_dir)  # held until this process exits
    check_port_free(settings.host, settings.port, data_dir=data_dir)
    redis_server = redis_log = None
    # Before the embedded Redis's socket exists (a command that finds the socket finds
    # this namespace); with the operator's Redis, commands without REDIS_HOST learn which.
    write_serve_file(data_dir, settings)
    if settings.broker == "redis" and settings.redis_host is None:
        sock = embedded_redis_socket(data_dir)
        redis_log = RedisLogRelay(data_dir / "redis" / "redis.log")
        redis_server = RedisServerProcess(
            data_dir / "redis", unix_socket=sock, appendfsync=settings.redis_appendfsync,
            maxmemory_mb=settings.redis_maxmemory_mb, own_session=True,
            preexec_fn=stop_with_parent(),
        ).start()
        redis_log.relay()  # e.g. its append-only file found cut short, and truncated
        settings = settings.model_copy(update={"redis_socket": str(sock)})
    settings = settings.model_copy(update={"data_dir": data_dir})
    dev_key = first_start_key(settings)
    # The children get the settings in their granular form; the old REDIS_URL beside it
    # would be a conflict (Settings.from_env), so it is not passed on, nor a variable that
    # is no setting (serve said so once; each child would say it again).
    from analytics.settings import unknown_names  # noqa: PLC0415

    dropped = {"REDIS_URL", *unknown_names(os.environ)}
    env = {**{k: v for k, v in os.environ.items() if k not in dropped}, **settings.to_env()}
    specs = {
        "worker": ["worker", "--queues", ",".join(QUEUES)],
        "api": ["api"],
        "scheduler": ["scheduler"],  # ops: periodic jobs (one active, Redis lease)
    }
    policy = RestartPolicy()
    policy.started("redis")
    redis_due: float | None = None
    disk_said = False
    children: dict[str, subprocess.Popen[bytes]] = {}
    for name, args in specs.items():
        children[name] = _child(args, env)
        policy.started(name)
    due: dict[str, float] = {}  # children waiting for their restart: when
    print(banner(settings, dev_key), flush=True)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: terminal closed
        signal.signal(signum, stop)
    try:
        while not stopping:
            exited = []
            if redis_server is not None and redis_due is None and (
                redis_server.proc is None or redis_server.proc.poll() is not None
            ):
                # Its append-only file holds every message it acknowledged: started again,
                # it has them all, and the children's clients reconnect.
                code = "at start" if redis_server.proc is None else redis_server.proc.returncode
                assert redis_log is not None
                redis_log.relay()  # why, in its own words (a short write: the disk full)
                wait = policy.exited("redis")
                print(f"analytics: redis exited with {code}; restarting in {wait:g} s",
                      flush=True)  # fmt: skip
                redis_due = time.monotonic() + wait
                exited.append("redis")
            if redis_server is not None and redis_due is not None and not stopping and (
                time.monotonic() >= redis_due
            ):
                redis_due = None
                policy.started("redis")
                try:
                    redis_server.start()
                except RuntimeError:  # it died at once (or never answered): said next round
                    redis_server.stop()
                assert redis_log is not None
                redis_log.relay()
            for name, proc in list(children.items()):
                if stopping or name in due or proc.poll() is None:
                    continue
                wait = policy.exited(name)
                print(f"analytics: {name} exited with {proc.returncode}; restarting in"
                      f" {wait:g} s", flush=True)  # fmt: skip
                due[name] = time.monotonic() + wait
                exited.append(name)
            if exited:
                notice = disk_full_notice(data_dir)
                if notice and not disk_said:
                    print(notice, flush=True)
                disk_said = notice is not None  # said once per episode
            for name, at in list(due.items()):
                if not stopping and time.monotonic() >= at:
                    del due[name]
                    children[name] = _child(specs[name], env)
                    policy.started(name)
            time.sleep(0.2)
    finally:
        for name in ("api", "worker", "scheduler"):
            proc = children[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in children.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if redis_server is not None:
            redis_server.stop()
    return 0
