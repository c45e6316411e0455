"""The compose health checks, run verbatim against the real processes they watch.

The command lines come from compose.yaml (only the environment differs: a private Redis
and namespace instead of the compose network), so a check that passes here is the one
Docker runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import RedisInfo
from tests.support import ROOT, analytics_cmd, child_env, wait_until

pytestmark = pytest.mark.e2e


def compose_service(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())["services"][name]


def check_argv(name: str) -> list[str]:
    test = compose_service(name)["healthcheck"]["test"]
    assert test[:2] == ["CMD", "analytics"], test
    return test[2:]


def run_check(argv: list[str], env: dict[str, str]) -> int:
    return subprocess.run(  # noqa: S603
        analytics_cmd(*argv), env=env, capture_output=True, timeout=60, check=False
    ).returncode


def assert_check_follows_the_process(
    service: str, command: list[str], env: dict[str, str], *, what: str, dead_message: str
) -> None:
    """The compose health check of ``service`` fails before ``command`` runs, passes once it
    runs, and fails again once its whole process group is SIGKILLed."""
    argv = check_argv(service)
    assert run_check(argv, env) == 1, f"healthy before any {what} ran"
    proc = subprocess.Popen(  # noqa: S603
        analytics_cmd(*command),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(lambda: run_check(argv, env) == 0, timeout=60, interval=0.5,
                   message=f"the {what} never became healthy")  # fmt: skip
        os.killpg(proc.pid, signal.SIGKILL)  # the whole process, heartbeat thread and all
        proc.wait(10)
        wait_until(lambda: run_check(argv, env) == 1, timeout=60, interval=0.5,
                   message=dead_message)  # fmt: skip
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture
def container_env(
    redis_server: RedisInfo, namespace: str, tmp_path: Path
) -> Callable[..., dict[str, str]]:
    """A container's environment here: this test's Redis namespace and data dir, plus extras."""

    def make(**extra: str) -> dict[str, str]:
        return child_env(**redis_server.env(namespace), ANALYTICS_DATA_DIR=str(tmp_path / "data"),
                         ANALYTICS_LOG_LEVEL="WARNING", **extra)  # fmt: skip

    return make


def test_worker_healthcheck_follows_the_real_worker(
    container_env: Callable[..., dict[str, str]],
) -> None:
    env = container_env(
        ANALYTICS_WORKER_HEARTBEAT_INTERVAL_S="0.5",
        ANALYTICS_HEARTBEAT_STALE_S="3",
        ANALYTICS_WORKER_METRICS_PORT="0",
    )
    service = "analytics-worker-maintenance"
    command = compose_service(service)["command"]
    assert_check_follows_the_process(
        service, [*command[:3], "--processes", "1", "--threads", "1"], env,
        what="worker", dead_message="a killed worker still looks healthy",
    )  # fmt: skip


def test_scheduler_healthcheck_follows_the_real_scheduler(
    container_env: Callable[..., dict[str, str]],
) -> None:
    env = container_env(ANALYTICS_SCHEDULER_LEASE_S="2")
    assert_check_follows_the_process(
        "analytics-beat", compose_service("analytics-beat")["command"], env,
        what="scheduler", dead_message="a killed scheduler's lease never expired",
    )  # fmt: skip
