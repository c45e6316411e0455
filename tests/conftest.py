"""Fixtures shared by every test layer.

Redis: the server named by REDIS_HOST/REDIS_PORT when set, otherwise a private
redis-server this run starts itself. Every test gets its own key namespace and deletes
only the keys under it, so a shared server's other keys are never touched.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from analytics.adapters.embedded_redis import RedisServerProcess
from tests.support import free_port


@dataclass
class RedisInfo:
    host: str
    port: int
    db: int
    server: RedisServerProcess | None  # None when we did not start it (REDIS_HOST given)

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, db=self.db, socket_timeout=5)

    def env(self, namespace: str) -> dict[str, str]:
        return {
            "REDIS_HOST": self.host,
            "REDIS_PORT": str(self.port),
            "REDIS_DB": str(self.db),
            "ANALYTICS_NAMESPACE": namespace,
        }

    @contextmanager
    def own_namespace(self) -> Iterator[str]:
        """A key prefix of the caller's own; its keys are deleted afterwards, and only those."""
        ns = f"t-{uuid.uuid4().hex[:12]}"
        try:
            yield ns
        finally:
            try:
                client = self.client()
                keys = list(client.scan_iter(match=f"{ns}*", count=1000))
                if keys:
                    client.delete(*keys)
            except redis.RedisError:
                pass  # a test that stopped the server cleans nothing


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisInfo]:
    if os.environ.get("REDIS_HOST"):
        yield RedisInfo(
            os.environ["REDIS_HOST"],
            int(os.environ.get("REDIS_PORT", "6379")),
            int(os.environ.get("REDIS_DB", "0")),
            None,
        )
        return
    port = free_port()
    server = RedisServerProcess(tmp_path_factory.mktemp("redis"), port=port).start()
    try:
        yield RedisInfo("127.0.0.1", port, 0, server)
    finally:
        server.stop()


@pytest.fixture
def namespace(redis_server: RedisInfo) -> Iterator[str]:
    """A key prefix of this test's own (see ``RedisInfo.own_namespace``)."""
    with redis_server.own_namespace() as ns:
        yield ns


@pytest.fixture(scope="module")
def module_namespace(redis_server: RedisInfo) -> Iterator[str]:
    """A key prefix of this test module's own, for the services a module's tests share."""
    with redis_server.own_namespace() as ns:
        yield ns


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServerProcess]:
    """A redis-server of the test module's own: for tests that flush its scripts or count
    every command it receives, which a shared server would not allow."""
    server = RedisServerProcess(tmp_path_factory.mktemp("private-redis"), port=free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServerProcess]:
    """A private redis-server for this test alone, for tests that stop or break it."""
    server = RedisServerProcess(tmp_path / "redis", port=free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


# --- AWS: one moto server per test session, spoken to over real HTTP ----------------------
_FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",  # noqa: S105 - moto's fake credentials
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class MotoInfo:
    endpoint_url: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """Environment for a child process that talks to this moto server."""
        return {**_FAKE_AWS_ENV, "ANALYTICS_AWS_ENDPOINT_URL": self.endpoint_url,
                "ANALYTICS_AWS_REGION": self.region}  # fmt: skip


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoInfo]:
    """moto in server mode on 127.0.0.1 at a free port; fake credentials in the environment.

    Tests share it: each names its own tables and topics (see ``aws_names``).
    """
    import logging  # noqa: PLC0415

    from moto.server import ThreadedMotoServer  # noqa: PLC0415 - test-only dependency

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per call
    saved = {k: os.environ.get(k) for k in _FAKE_AWS_ENV}
    os.environ.update(_FAKE_AWS_ENV)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield MotoInfo(f"http://127.0.0.1:{port}")
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def aws_names() -> dict[str, str]:
    """Settings env naming this test's own tables and topic on the shared moto server."""
    tag = uuid.uuid4().hex[:10]
    return {
        "ANALYTICS_EVENTS_TABLE": f"events-{tag}",
        "ANALYTICS_AGGREGATES_TABLE": f"aggregates-{tag}",
        "ANALYTICS_SNS_TOPIC_ARN": f"arn:aws:sns:us-east-1:123456789012:events-{tag}",
    }


# --- RabbitMQ: the server at 127.0.0.1:5672, one private vhost per test module ------------
def _rabbitmqctl(*args: str) -> bool:
    import shutil  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    exe = shutil.which("rabbitmqctl")
    if exe is None:
        return False
    try:
        done = subprocess.run([exe, "-q", *args], capture_output=True, timeout=60, check=False)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture(scope="module")
def rabbitmq_url() -> Iterator[str]:
    """An AMQP URL on a vhost of this module's own (queue names are fixed, vhosts are not).

    Skips when no RabbitMQ listens on 127.0.0.1:5672 or ``rabbitmqctl`` cannot add a vhost
    (sharing ``/`` with other runs would let their workers take our messages).
    """
    import socket  # noqa: PLC0415

    host = os.environ.get("RABBITMQ_HOST", "127.0.0.1")
    port = int(os.environ.get("RABBITMQ_PORT", "5672"))
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        pytest.skip(f"RabbitMQ is not reachable at {host}:{port}")
    vhost = f"t-{uuid.uuid4().hex[:12]}"
    if not _rabbitmqctl("add_vhost", vhost):
        pytest.skip("rabbitmqctl cannot add a private vhost (needs root or the rabbitmq user)")
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield f"amqp://guest:guest@{host}:{port}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


# --- the fault suite's table (tests/e2e/test_faults.py), printed in pytest's summary ------
FAULT_SCENARIOS = ("worker-kill", "redis-restart", "storage-outage", "client-retries")


def pytest_sessionstart(session: pytest.Session) -> None:
    if hasattr(session.config, "workerinput"):
        return
    _SHM_BEFORE.update(_metrics_dirs())  # the controller, or a run without xdist
    cache = getattr(session.config, "cache", None)  # None under -p no:cacheprovider
    if cache is not None:
        for name in FAULT_SCENARIOS:  # only this run's rows are shown
            cache.set(f"faults/{name}", None)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Processes the tests kill outright leave their metrics directory in /dev/shm (the
    service removes it at the next start for the same data directory, which a test's
    temporary one never sees). What this run made and nobody holds any more goes."""
    if hasattr(session.config, "workerinput"):
        return
    import fcntl  # noqa: PLC0415
    import shutil  # noqa: PLC0415

    for path in _metrics_dirs() - _SHM_BEFORE:
        try:
            for lock in path.glob("*.lock"):
                with lock.open("rb") as f:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if an owner lives
            shutil.rmtree(path)
        except OSError:
            continue  # still owned, or gone already


def _metrics_dirs() -> set[Path]:
    from analytics.settings import SHARED_MEMORY_DIR  # noqa: PLC0415

    try:
        return set(SHARED_MEMORY_DIR.glob("analytics-metrics-*"))
    except OSError:
        return set()


_SHM_BEFORE: set[Path] = set()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    from bench.faults import HEADER  # noqa: PLC0415

    cache = getattr(config, "cache", None)  # without the cache provider: no table
    rows = [cache.get(f"faults/{name}", None) for name in FAULT_SCENARIOS] if cache else []
    if any(rows):
        terminalreporter.write_sep("-", "fault suite (bench/faults.py)")
        terminalreporter.write_line("\n".join([HEADER, *filter(None, rows)]))


@pytest.fixture(autouse=True, scope="session")
def _working_directory_of_their_own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests run in a working directory of their own: some build ``Settings()`` with its
    defaults, whose data directory is ``./data``, which must not be the checkout's."""
    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    try:
        yield
    finally:
        os.chdir(before)
