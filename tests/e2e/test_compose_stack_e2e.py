"""compose.yaml's application services as real processes, without Docker.

Each service runs its compose ``command`` with its compose ``environment`` on top of the
image's ``ENV``; only what the compose network provides is replaced by loopback
equivalents: Redis (private server), the DynamoDB endpoint (a moto server), the API port,
a data directory per container, unique table names, ``/app/config`` -> ``config/``, and one
worker process instead of four. Then ``analytics init`` runs, the four services start,
every compose health check passes verbatim, and an event sent with an API key comes back
out of search: the files describe a stack that works.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import RedisInfo
from tests.support import (
    ROOT,
    AnalyticsProcess,
    analytics_cmd,
    child_env,
    free_port,
    http_json,
    running,
    wait_until,
)

pytestmark = pytest.mark.e2e

SERVICES = (
    "analytics-service",
    "analytics-worker",
    "analytics-worker-maintenance",
    "analytics-beat",
)


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    in_runtime = False
    for line in (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "FROM":
            in_runtime = "AS runtime" in rest
        elif word == "ENV" and in_runtime:
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return {k: v for k, v in env.items() if k.startswith("ANALYTICS_")}


def local(value: str) -> str:
    return value.replace("/app/config/", f"{ROOT / 'config'}/")


def http(method: str, url: str, body: object | None = None, key: str = "") -> tuple[int, Any]:
    answer = http_json(method, url, body, headers={"Authorization": f"Bearer {key}"})
    return answer.status, answer.body


def test_the_compose_services_run_together(
    redis_server: RedisInfo, namespace: str, moto_server: Any, tmp_path: Path
) -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    tag = uuid.uuid4().hex[:8]
    port = free_port()

    def env_of(name: str) -> dict[str, str]:
        env = {**image_env(), **{k: local(str(v)) for k, v in compose[name]["environment"].items()}}
        env.update(
            REDIS_HOST="127.0.0.1", REDIS_PORT=str(redis_server.port),
            REDIS_DB=str(redis_server.db), ANALYTICS_NAMESPACE=namespace,
            ANALYTICS_DYNAMODB_ENDPOINT_URL=moto_server.endpoint_url,
            ANALYTICS_EVENTS_TABLE=f"compose-events-{tag}",
            ANALYTICS_AGGREGATES_TABLE=f"compose-agg-{tag}",
            ANALYTICS_DATA_DIR=str(tmp_path / name), ANALYTICS_HOST="127.0.0.1",
            ANALYTICS_PORT=str(port), ANALYTICS_LOG_LEVEL="WARNING",
            ANALYTICS_WORKER_METRICS_PORT="0", ANALYTICS_WORKER_SHUTDOWN_TIMEOUT_S="5",
        )  # fmt: skip
        return child_env(**env)

    def command_of(name: str) -> list[str]:
        cmd = [local(str(c)) for c in compose[name]["command"]]
        if "--processes" in cmd:
            cmd[cmd.index("--processes") + 1] = "1"
        return cmd

    init = subprocess.run(  # noqa: S603
        analytics_cmd(*command_of("analytics-init")), env=env_of("analytics-init"),
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr.decode()[-2000:]

    logs = tmp_path / "logs"
    logs.mkdir()
    procs = {
        name: AnalyticsProcess(*command_of(name), env=env_of(name), log=logs / f"{name}.log",
                               start_new_session=True)
        for name in SERVICES
    }  # fmt: skip
    with running(*procs.values()):
        base = f"http://127.0.0.1:{port}"
        procs["analytics-service"].wait_http(f"{base}/health", timeout=90)

        # Every compose health check, verbatim (the API's with the loopback port).
        for name in SERVICES:
            test = [local(str(t)) for t in compose[name]["healthcheck"]["test"][1:]]
            test = [t.replace(":8083/", f":{port}/") for t in test]
            argv = (
                analytics_cmd(*test[1:]) if test[0] == "analytics" else [sys.executable, *test[1:]]
            )

            def healthy(argv: list[str] = argv, name: str = name) -> bool:
                run = subprocess.run(argv, env=env_of(name), capture_output=True, timeout=60,  # noqa: S603
                                     check=False)  # fmt: skip
                return run.returncode == 0

            wait_until(
                healthy, timeout=90, interval=1, message=f"{name} never healthy; logs in {logs}"
            )

        # An operator key (as the README says: `analytics keys create` in the API container).
        created = subprocess.run(
            analytics_cmd("keys", "create", "--name", "e2e", "--scopes", "ingest,read"),
            env=env_of("analytics-service"), capture_output=True, timeout=60, check=True,
        )  # fmt: skip
        key = created.stdout.decode().splitlines()[0].strip()
        event_id = str(uuid.uuid4())
        status, body = http("POST", f"{base}/api/v1/analytics/events", {
            "event_type": "purchase", "user_id": f"u-{tag}", "session_id": "s1",
            "product_id": "sku-1", "price": "9.50", "currency": "EUR", "event_id": event_id,
        }, key)  # fmt: skip
        assert status == 202, body
        assert http("POST", f"{base}/api/v1/analytics/events", {"event_type": "x"})[0] == 401

        def found() -> bool:
            status, page = http("GET", f"{base}/api/v1/analytics/events/search?user_id=u-{tag}",
                                key=key)  # fmt: skip
            return status == 200 and [i["event_id"] for i in page["items"]] == [event_id]

        wait_until(found, timeout=60, interval=0.5, message=f"event never stored; logs in {logs}")
