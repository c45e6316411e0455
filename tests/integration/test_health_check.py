"""``analytics check worker|scheduler`` against a real Redis: fresh, stale, absent, down."""

from __future__ import annotations

import json
import time

import pytest

from analytics.entrypoints.cli import build_parser
from analytics.entrypoints.health_check import run_check
from analytics.settings import Settings
from tests.conftest import RedisInfo
from tests.support import free_port

pytestmark = pytest.mark.integration


def settings_for(redis: RedisInfo, namespace: str) -> Settings:
    return Settings.from_env(redis.env(namespace))


def beat(redis: RedisInfo, namespace: str, queue: str, age_s: float) -> None:
    doc = {"at": time.time() - age_s, "pid": 1, "host": "test"}
    redis.client().set(f"{namespace}:heartbeat:{queue}", json.dumps(doc))


def check(argv: list[str], settings: Settings) -> int:
    return run_check(build_parser().parse_args(["check", *argv]), settings)


def test_worker_check(
    redis_server: RedisInfo, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    s = settings_for(redis_server, namespace)
    argv = ["worker", "--queues", "high_priority,aggregations", "--max-age", "30"]
    assert check(argv, s) == 1
    assert "high_priority (none)" in capsys.readouterr().out

    beat(redis_server, namespace, "high_priority", 1)
    assert check(argv, s) == 1, "one queue still has no heartbeat"
    beat(redis_server, namespace, "aggregations", 2)
    assert check(argv, s) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("healthy")

    beat(redis_server, namespace, "aggregations", 120)
    assert check(argv, s) == 1
    assert "aggregations (120s old)" in capsys.readouterr().out
    assert check(["worker", "--queues", "high_priority", "--max-age", "30"], s) == 0


def test_scheduler_check(redis_server: RedisInfo, namespace: str) -> None:
    s = settings_for(redis_server, namespace)
    assert check(["scheduler"], s) == 1
    redis_server.client().set(f"{namespace}:scheduler:leader", "host:1:abcd", px=10_000)
    assert check(["scheduler"], s) == 0


def test_unreachable_redis_is_unhealthy_quickly(capsys: pytest.CaptureFixture[str]) -> None:
    s = Settings.from_env({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(free_port())})
    assert check(["worker", "--timeout", "0.5"], s) == 1
    assert check(["scheduler", "--timeout", "0.5"], s) == 1
    assert "Redis unreachable" in capsys.readouterr().out


def test_a_heartbeat_just_past_max_age_is_stale(
    redis_server: RedisInfo, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Mutation QA: ``--max-age 30`` means a worker silent for 45 s is unhealthy, and the
    container is restarted when its worker hung; a check lenient up to twice the age (60 s
    here) left a hung worker in service that much longer."""
    s = settings_for(redis_server, namespace)
    argv = ["worker", "--queues", "high_priority", "--max-age", "30"]
    beat(redis_server, namespace, "high_priority", 45)
    assert check(argv, s) == 1
    assert "high_priority (45s old)" in capsys.readouterr().out
    beat(redis_server, namespace, "high_priority", 20)
    assert check(argv, s) == 0


def test_check_without_redis_host_or_serve_says_which_redis_it_asks(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    """QA: with no REDIS_HOST and no serve for the data directory, ``check`` asked the
    Redis on 127.0.0.1 (on these machines another deployment's) and reported its
    heartbeats as this one's, without a word; ``worker`` already said so."""
    from analytics.entrypoints.cli import main  # noqa: PLC0415

    for name in ("REDIS_HOST", "REDIS_SOCKET", "REDIS_URL", "ANALYTICS_BROKER"):
        monkeypatch.delenv(name, raising=False)
    port = free_port()  # nothing listens: the check fails, after saying where it looked
    monkeypatch.setenv("REDIS_PORT", str(port))
    assert main(["check", "scheduler", "--data-dir", str(tmp_path), "--timeout", "0.5"]) == 1
    err = capsys.readouterr().err
    assert f"analytics check: no REDIS_HOST set and no analytics serve running for {str(tmp_path)!r}" in err
    assert f"using the Redis at 127.0.0.1:{port}" in err

    monkeypatch.setenv("REDIS_HOST", "127.0.0.1")  # configured: nothing to say
    assert main(["check", "scheduler", "--data-dir", str(tmp_path), "--timeout", "0.5"]) == 1
    assert "no REDIS_HOST set" not in capsys.readouterr().err
