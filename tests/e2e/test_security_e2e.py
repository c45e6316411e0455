"""The running API (gunicorn, real Redis) against its own contract.

- ``analytics keys create|list|revoke`` on the same data dir as the running service;
- schemathesis over the service's own /api/v1/openapi.json: no 5xx, every response
  conforms to the document (status, content type, headers, schema);
- headless Chromium opens /docs and finds every route of the document listed.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import RedisInfo
from tests.support import AnalyticsProcess, ServeProcess, analytics_cmd, child_env, free_port

pytestmark = pytest.mark.e2e
EVENT = {"event_type": "page_view", "user_id": "u1", "session_id": "s1"}


class Service:
    def __init__(self, url: str, env: dict[str, str], data_dir: Path, key: str,
                 stored_keys: Callable[[], bytes]) -> None:  # fmt: skip
        self.url, self.env, self.data_dir, self.key = url, env, data_dir, key
        self.stored_keys = stored_keys  # everything the key store holds, raw

    def keys(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603
            analytics_cmd("keys", *args, "--data-dir", str(self.data_dir)),
            env=self.env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip


@pytest.fixture(scope="module")
def service(
    redis_server: RedisInfo, module_namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("security-e2e")
    port = free_port()
    env = child_env(
        **redis_server.env(module_namespace),
        ANALYTICS_DATA_DIR=str(data_dir),
        ANALYTICS_STORAGE="memory",
        ANALYTICS_PORT=str(port),
        ANALYTICS_WEB_WORKERS="2",
        ANALYTICS_WEB_THREADS="4",
        ANALYTICS_LOG_LEVEL="WARNING",
        ANALYTICS_ANON_RATE_LIMIT_BURST="100000",
    )
    created = subprocess.run(  # noqa: S603
        analytics_cmd("keys", "create", "--name", "e2e", "--scopes", "ingest,read,admin",
                      "--rate-per-minute", "100000000", "--burst", "10000000",
                      "--data-dir", str(data_dir)),
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    key = created.stdout.strip()
    assert re.fullmatch(r"ak_[0-9a-f]{12}_[A-Za-z0-9_\-]{43}", key), created.stdout

    def stored_keys() -> bytes:
        return b"".join(redis_server.client().hvals(f"{module_namespace}:api_keys"))

    url = f"http://127.0.0.1:{port}"
    with AnalyticsProcess("api", env=env, log=data_dir / "api.log", stop_timeout=20) as api:
        api.wait_http(url + "/health", timeout=60)
        yield Service(url, env, data_dir, key, stored_keys)


def test_keys_cli_create_list_revoke(service: Service) -> None:
    created = service.keys("create", "--name", "reader", "--scopes", "read")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert "shown only this once" in created.stderr
    key_id = secret.split("_")[1]
    listed = service.keys("list")
    assert key_id in listed.stdout and "reader" in listed.stdout and secret not in listed.stdout
    stored = service.stored_keys()  # REDIS_HOST is set: keys live in Redis, shared
    assert key_id.encode() in stored and secret.split("_", 2)[2].encode() not in stored
    post = lambda k: requests.post(  # noqa: E731
        service.url + "/api/v1/analytics/events", json=EVENT, headers={"X-API-Key": k}, timeout=10
    )
    assert post(secret).status_code == 403  # read-only key
    assert post(service.key).status_code == 202
    revoked = service.keys("revoke", secret)  # the whole key, or just its id
    assert revoked.returncode == 0 and key_id in revoked.stdout
    r = post(secret)
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    assert "revoked" in service.keys("list").stdout
    again = service.keys("revoke", key_id)
    assert again.returncode == 1 and "no active key" in again.stderr  # as dlq's unknown id
    bad = service.keys("create", "--name", "x", "--scopes", "ingest,root")
    assert bad.returncode == 2 and "unknown scope" in bad.stderr


def test_rate_limit_is_shared_by_the_workers_and_counts_events(service: Service) -> None:
    created = service.keys("create", "--name", "slow", "--scopes", "ingest",
                           "--rate-per-minute", "1", "--burst", "120")  # fmt: skip
    headers = {"Authorization": f"Bearer {created.stdout.strip()}"}
    url = service.url + "/api/v1/analytics/events/batch"
    statuses = []
    for _ in range(3):  # a new connection each time: gunicorn spreads them over its workers
        r = requests.post(url, json={"events": [EVENT] * 50}, headers=headers, timeout=10)
        statuses.append(r.status_code)
    assert statuses == [202, 202, 429]
    assert r.headers["RateLimit-Limit"] == "120" and int(r.headers["Retry-After"]) > 0
    assert r.headers["Content-Type"] == "application/problem+json"


def test_a_refused_body_leaves_the_keep_alive_connection_usable(service: Service) -> None:
    """Refused before its body was read (415, 401, 404), a request left the body on the
    socket; gunicorn discarded 64 KiB of it and closed the connection it had just answered
    as keep-alive, and a pooled client's next POST failed (QA). All on one connection."""
    host, port = service.url.removeprefix("http://").split(":")
    body = json.dumps({**EVENT, "metadata": {"x": "a" * 200_000}}).encode()  # > 64 KiB
    auth = {"Authorization": f"Bearer {service.key}"}
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        for path, headers, status in [
            ("/api/v1/analytics/events", {**auth, "Content-Type": "text/plain"}, 415),
            ("/api/v1/analytics/events/batch", {**auth, "Content-Type": "application/json",
                                                "Content-Encoding": "br"}, 415),
            ("/api/v1/analytics/events", {"Authorization": "Bearer ak_nope",
                                          "Content-Type": "application/json"}, 401),
            ("/api/v1/no-such-route", {**auth, "Content-Type": "application/json"}, 404),
            ("/api/v1/analytics/events/batch", {**auth, "Content-Type": "application/json"},
             413),  # 2 MiB, over the body limit: read and dropped too (QA: a reset next)
        ]:  # fmt: skip
            sent = body if status != 413 else b'{"events": [' + b" " * (2 << 20) + b"]}"
            conn.request("POST", path, body=sent, headers=headers)
            sock = conn.sock
            answer = conn.getresponse()
            answer.read()
            assert answer.status == status, (path, answer.status)
            assert answer.getheader("Connection", "keep-alive").lower() == "keep-alive"
            conn.request("GET", "/health")  # the same socket: not closed under the client
            assert conn.sock is sock
            health = conn.getresponse()
            assert (health.status, json.loads(health.read())["status"]) == (200, "ok"), path
    finally:
        conn.close()


def test_docs_in_headless_chromium_lists_every_route(service: Service, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    doc = requests.get(service.url + "/api/v1/openapi.json", timeout=10).json()
    run = subprocess.run(  # noqa: S603
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
         "--enable-logging=stderr", "--log-level=0",
         "--virtual-time-budget=20000", "--dump-dom", service.url + "/docs"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    dom = run.stdout
    # The page works under its strict CSP: Chromium logs every violation to the console.
    violations = [line for line in run.stderr.splitlines() if "Content Security Policy" in line]
    assert not violations, violations
    listed = set(re.findall(r'data-path="([^"]+)"', dom))
    assert listed, dom[:2000]
    missing = [p for p in doc["paths"] if p.replace("&", "&amp;") not in listed]
    assert not missing, f"not rendered on /docs: {missing}"


def test_schemathesis_against_the_running_service(service: Service) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(service.url + "/api/v1/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_headers_conformance, response_schema_conformance]  # fmt: skip
    headers = {"Authorization": f"Bearer {service.key}"}
    failures: list[str] = []
    operations = list(schema.get_all_operations())
    assert len(operations) >= 6
    for result in operations:
        operation = result.ok()

        def make(op):  # type: ignore[no-untyped-def]
            @settings(max_examples=10, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            @given(case=op.as_strategy())
            def run(case) -> None:  # type: ignore[no-untyped-def]
                case.call_and_validate(base_url=service.url, headers=headers, checks=checks)

            return run

        try:
            make(operation)()
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_serve_prints_a_dev_key_on_first_start(tmp_path: Path) -> None:
    """The embedded default with auth on: the printed key works, no key gets 401.

    That a later start prints no new key is tests/unit/test_api_keys.py's
    test_serve_first_start_key (a second full start would double this test's time).
    """
    data_dir = tmp_path / "data"
    env = child_env(ANALYTICS_WEB_WORKERS="1", ANALYTICS_WORKER_PROCESSES="1",
                    ANALYTICS_LOG_LEVEL="WARNING")  # fmt: skip
    log_path = tmp_path / "serve.log"
    with ServeProcess(data_dir, env, log=log_path) as serve:
        url = serve.url
        text = log_path.read_text()
        keys = re.findall(r"ak_[0-9a-f]{12}_[A-Za-z0-9_\-]{43}", text)
        assert keys and len(set(keys)) == 1, text
        assert f"Authorization: Bearer {keys[0]}" in text  # the curl line uses it
        r = requests.post(url + "/api/v1/analytics/events", json=EVENT,
                          headers={"Authorization": f"Bearer {keys[0]}"}, timeout=10)  # fmt: skip
        assert r.status_code == 202, r.text
        assert (
            requests.post(url + "/api/v1/analytics/events", json=EVENT, timeout=10).status_code
            == 401
        )
        listed = subprocess.run(  # noqa: S603
            analytics_cmd("keys", "list", "--data-dir", str(data_dir)), env=env,
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        assert "development" in listed and keys[0] not in listed


def test_overload_answers_503_with_retry_after_then_recovers(
    redis_server: RedisInfo, namespace: str, tmp_path: Path
) -> None:
    """No worker: the backlog grows past the threshold and ingest answers 503 at once with
    Retry-After (the cap: nothing drains yet); a worker starts, drains, ingest recovers."""
    import time

    port = free_port()
    env = child_env(**redis_server.env(namespace), ANALYTICS_DATA_DIR=str(tmp_path),
                    ANALYTICS_STORAGE="sqlite", ANALYTICS_PORT=str(port), ANALYTICS_AUTH="disabled",
                    ANALYTICS_WEB_WORKERS="1", ANALYTICS_WORKER_PROCESSES="1",
                    ANALYTICS_LOG_LEVEL="WARNING", ANALYTICS_OVERLOAD_QUEUE_DEPTH="3",
                    ANALYTICS_OVERLOAD_RETRY_AFTER_MAX_S="42")  # fmt: skip
    url = f"http://127.0.0.1:{port}/api/v1/analytics/events"
    with AnalyticsProcess("api", env=env, stop_timeout=20) as api:
        api.wait_http(f"http://127.0.0.1:{port}/health", timeout=60)
        statuses = []
        for _ in range(100):  # the depth probe is cached for 0.5 s: stop at the first 503
            r = requests.post(url, json=EVENT, timeout=10)
            statuses.append(r.status_code)
            if r.status_code == 503:
                break
            time.sleep(0.1)
        assert statuses[:4] == [202] * 4 and statuses[-1] == 503, statuses
        assert r.headers["Retry-After"] == "42" and r.json()["type"].endswith(":overloaded")
        with AnalyticsProcess("worker", "--queues", "high_priority", env=env, stop_timeout=20):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                r = requests.post(url, json=EVENT, timeout=10)
                if r.status_code == 202:
                    break
                assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
                time.sleep(0.2)
            assert r.status_code == 202, "ingest did not recover once the backlog drained"


def test_keys_cli_with_the_store_unreachable_is_one_line(tmp_path: Path) -> None:
    env = child_env(REDIS_HOST="127.0.0.1", REDIS_PORT=str(free_port()),
                    ANALYTICS_REDIS_TIMEOUT_S="0.5")  # fmt: skip
    r = subprocess.run(analytics_cmd("keys", "list"), env=env, capture_output=True, text=True,  # noqa: S603
                       timeout=60, check=False)  # fmt: skip
    assert r.returncode == 1 and r.stdout == ""  # as dlq's and check's (README "Commands")
    assert "key store is unavailable" in r.stderr and "Traceback" not in r.stderr
