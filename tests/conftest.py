"""Fixtures shared by every test layer.

Redis: the server named by REDIS_HOST/REDIS_PORT when set, otherwise a private
redis-server this run starts itself. Every test gets its own key namespace and deletes
only the keys under it, so a shared server's other keys are never touched.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
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
    """A key prefix of this test's own; its keys are deleted afterwards, and only those."""
    ns = f"t-{uuid.uuid4().hex[:12]}"
    yield ns
    try:
        client = redis_server.client()
        keys = list(client.scan_iter(match=f"{ns}*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass  # a test that stopped the server cleans nothing


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


# --- the fault suite's table (tests/e2e/test_faults.py), printed in pytest's summary ------
FAULT_SCENARIOS = ("worker-kill", "redis-restart", "storage-outage", "client-retries")


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):  # the controller, or a run without xdist
        for name in FAULT_SCENARIOS:  # only this run's rows are shown
            session.config.cache.set(f"faults/{name}", None)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    from bench.faults import HEADER  # noqa: PLC0415

    rows = [config.cache.get(f"faults/{name}", None) for name in FAULT_SCENARIOS]
    if any(rows):
        terminalreporter.write_sep("-", "fault suite (bench/faults.py)")
        terminalreporter.write_line("\n".join([HEADER, *filter(None, rows)]))
