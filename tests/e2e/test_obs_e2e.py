"""Observability of the real processes: ``analytics api`` (gunicorn, 2 workers) and
``analytics worker`` (dramatiq, 2 processes) against a real Redis, scraped by promtool and
by a real Prometheus; one correlation id followed from HTTP into the worker's log."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from analytics.entrypoints.api.observability import MetricsResource
from analytics.settings import default_metrics_base
from tests.support import (
    AnalyticsProcess,
    child_env,
    free_port,
    http_json,
    running,
    wait_http,
    wait_until,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EVENTS = "/api/v1/analytics/events"


@dataclass
class Service:
    url: str
    worker_metrics: str
    namespace: str
    data_dir: Path
    api_log: Path
    worker_log: Path
    api_port: int
    worker_port: int
    api_pid: int


post = partial(http_json, "POST", timeout=30)  # two loaded gunicorn workers: allow time


def get(url: str, timeout: float = 30) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
        return resp.status, resp.read().decode()


def fresh_metrics(url: str) -> str:
    """A scrape that sees everything done before the call: each API process renders
    /metrics at most once a second (``MetricsResource.fresh_s``)."""
    time.sleep(MetricsResource.fresh_s + 0.1)
    return get(url + "/metrics")[1]


def metric(text: str, line_start: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(line_start):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _processes(text: str, component: str) -> float:
    return metric(text, f'analytics_processes{{component="{component}"}}')


def event(event_type: str = "page_view", **extra: object) -> dict[str, object]:
    return {"event_type": event_type, "user_id": "u1", "session_id": "s1", **extra}


@pytest.fixture(scope="module")
def service(redis_server, module_namespace, tmp_path_factory) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("obs-e2e")
    ns = module_namespace
    api_port, worker_port = free_port(), free_port()
    env = child_env(
        **redis_server.env(ns),
        ANALYTICS_DATA_DIR=str(data_dir),
        ANALYTICS_AUTH="disabled",  # not the subject: tests/integration/test_auth_matrix.py
        # Nor are rate limits (tests/integration/test_rate_limit_redis.py): the heavy-ingest
        # test below sends batches until its scrapes are done, and on a fast run that passed
        # the per-address burst (5,000 events) and got 429s.
        ANALYTICS_RATE_LIMIT="disabled",
        ANALYTICS_PORT=str(api_port),
        ANALYTICS_WEB_WORKERS="2",
        ANALYTICS_WEB_THREADS="4",
        ANALYTICS_WORKER_PROCESSES="2",
        ANALYTICS_WORKER_THREADS="2",
        ANALYTICS_WORKER_METRICS_PORT=str(worker_port),
        ANALYTICS_WORKER_HEARTBEAT_INTERVAL_S="0.5",
        ANALYTICS_HEARTBEAT_TIMEOUT_S="5",
    )
    api_log, worker_log = data_dir / "api.stderr", data_dir / "worker.stderr"
    worker = AnalyticsProcess("worker", env=env, log=worker_log, log_stdout=False)
    api = AnalyticsProcess("api", env=env, log=api_log, log_stdout=False)
    with running(worker, api):
        url = f"http://127.0.0.1:{api_port}"
        api.wait_http(url + "/health", timeout=60)
        worker.wait_http(f"http://127.0.0.1:{worker_port}/metrics", timeout=60)
        # /health answers once one gunicorn worker is up; the tests count both of them
        # (and both worker processes), whichever test this xdist worker runs first.
        for target, component in ((url + "/metrics", "api"),
                                  (f"http://127.0.0.1:{worker_port}/metrics", "worker")):  # fmt: skip
            wait_until(
                lambda t=target, c=component: _processes(get(t)[1], c) == 2, timeout=60,
                message=f"not every {component} process reports metrics",
            )
        yield Service(
            url, f"http://127.0.0.1:{worker_port}/metrics", ns, data_dir, api_log, worker_log,
            api_port, worker_port, api.proc.pid,
        )  # fmt: skip


def json_lines(path: Path) -> list[dict[str, object]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def test_one_correlation_id_from_the_request_to_the_worker_log(service):
    cid = f"e2e-{uuid.uuid4().hex[:16]}"
    secret = f"sk_{uuid.uuid4().hex}"
    status, headers, body = post(
        service.url + EVENTS + f"?api_key={secret}",
        event(),
        headers={"X-Correlation-ID": cid, "Authorization": f"Bearer {secret}", "X-API-Key": secret},
    )
    assert status == 202
    assert headers["X-Correlation-ID"] == cid and body["correlation_id"] == cid

    def stored_line() -> dict[str, object] | None:
        for line in json_lines(service.worker_log):
            if line.get("event") == "events stored" and line.get("correlation_id") == cid:
                return line
        return None

    wait_until(lambda: stored_line() is not None, timeout=30, message="no worker log line")
    line = stored_line()
    assert line is not None
    assert line["actor"] == "process_events" and line["message_id"] == body["background_task_id"]
    access = [
        x for x in json_lines(service.api_log)
        if x.get("event") == "request" and x.get("correlation_id") == cid
    ]  # fmt: skip
    assert len(access) == 1
    assert access[0]["route"] == EVENTS and access[0]["status"] == 202
    assert isinstance(access[0]["duration_ms"], float)
    for log in (service.api_log, service.worker_log):
        assert secret not in log.read_text(errors="replace")


def test_malformed_correlation_id_is_replaced_not_echoed(service):
    bad = "x" * 200
    status, headers, body = post(service.url + EVENTS, event(), headers={"X-Correlation-ID": bad})
    assert status == 202
    assert (
        headers["X-Correlation-ID"] != bad and body["correlation_id"] == headers["X-Correlation-ID"]
    )
    assert bad not in service.api_log.read_text()


def test_counts_are_right_across_gunicorn_workers_and_promtool_accepts_both_expositions(service):
    n = 30
    event_type = f"mp_{uuid.uuid4().hex[:8]}"
    for _ in range(n):  # one connection per request: both gunicorn workers take some
        assert post(service.url + EVENTS, event(event_type))[0] == 202
    text = fresh_metrics(service.url)
    assert metric(text, f'analytics_events_accepted_total{{event_type="{event_type}"}}') == n
    assert metric(text, 'analytics_processes{component="api"}') == 2
    assert (
        'route="/api/v1/analytics/events"' in text
        and "/health/detailed" not in text.split("analytics_http_requests_total")[0]
    )

    def worker_stored() -> float:
        return metric(get(service.worker_metrics)[1], "analytics_events_stored_total")

    wait_until(lambda: worker_stored() >= n, timeout=30, message="worker did not store events")
    _, wtext = get(service.worker_metrics)
    assert metric(wtext, 'analytics_processes{component="worker"}') == 2
    assert metric(wtext, 'analytics_tasks_processed_total{actor="process_events"') >= 1
    assert "analytics_task_duration_seconds_bucket" in wtext

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    for exposition in (text, wtext):
        result = subprocess.run(
            [promtool, "check", "metrics"], input=exposition, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr


def test_health_detailed_sees_the_worker_heartbeats(service):
    def body() -> dict:
        return json.loads(get(service.url + "/health/detailed")[1])

    wait_until(lambda: body()["workers"]["high_priority"]["status"] == "ok", timeout=30)
    report = body()
    assert report["checks"]["redis"]["status"] == "ok"
    assert report["queues"]["high_priority"]["dead"] == 0


def test_a_scrape_during_heavy_ingest_still_answers(service):
    stop = threading.Event()
    errors: list[BaseException] = []
    sent: list[int] = []

    def ingest() -> None:
        batch = {"events": [event("load") for _ in range(50)]}
        while not stop.is_set():
            try:
                sent.append(post(service.url + EVENTS + "/batch", batch)[0])
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
                return

    threads = [threading.Thread(target=ingest) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(sent) >= 4, timeout=30, message="ingest did not start")
        scrapes = 0
        while scrapes < 5 or len(sent) < 20:
            status, text = get(service.url + "/metrics", timeout=10)
            assert status == 200 and "analytics_http_requests_total" in text
            scrapes += 1
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors
    assert set(sent) == {202}


def test_a_real_prometheus_scrapes_the_service(service, tmp_path):
    binary = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if binary is None:
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    n = 7
    event_type = f"prom_{uuid.uuid4().hex[:8]}"
    for _ in range(n):
        assert post(service.url + EVENTS, event(event_type))[0] == 202

    port = free_port()
    shutil.copy(ROOT / "config" / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": ["alerts.yml"],
                "scrape_configs": [
                    {"job_name": "analytics-api",
                     "static_configs": [{"targets": [f"127.0.0.1:{service.api_port}"]}]},
                    {"job_name": "analytics-worker",
                     "static_configs": [{"targets": [f"127.0.0.1:{service.worker_port}"]}]},
                ],
            }
        )
    )  # fmt: skip
    log = (tmp_path / "prometheus.log").open("wb")
    prom = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(expr: str) -> list[dict]:
        url = f"{api}/query?" + urllib.parse.urlencode({"query": expr})
        doc = json.loads(get(url)[1])
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=60, proc=prom)
        wait_until(
            lambda: len([r for r in query("up == 1") if r["metric"]["job"].startswith("analytics")]) == 2,
            timeout=60, message="targets not up",
        )  # fmt: skip
        expr = f'sum(analytics_events_accepted_total{{event_type="{event_type}"}})'
        wait_until(lambda: bool(query(expr)), timeout=30, message="counter not scraped")
        assert float(query(expr)[0]["value"][1]) == n
        # The alert rules load in a real Prometheus, and nothing fires on a healthy service.
        rules = json.loads(get(f"{api}/rules")[1])["data"]["groups"]
        names = {r["name"] for g in rules for r in g["rules"]}
        assert {"AnalyticsHighErrorRate", "AnalyticsHighTaskFailureRate"} <= names
        # Every dashboard query is valid PromQL on the scraped data.
        dash = json.loads((ROOT / "config/grafana/analytics-dashboard.json").read_text())
        for panel in dash["panels"]:
            for target in panel["targets"]:
                promql = (
                    target["expr"].replace("$__rate_interval", "1m")
                    .replace("$api_job", "analytics-api").replace("$worker_job", "analytics-worker")
                )  # fmt: skip
                query(promql)
        # The system metrics reached Prometheus from both targets.
        assert len(query("analytics_system_memory_used_ratio")) == 2
    finally:
        prom.terminate()
        try:
            prom.wait(30)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()
        log.close()


def test_a_killed_gunicorn_worker_is_marked_dead_and_its_counts_are_kept(service):
    import os
    import signal

    import psutil

    event_type = f"kill_{uuid.uuid4().hex[:8]}"
    for _ in range(10):
        assert post(service.url + EVENTS, event(event_type))[0] == 202
    line = f'analytics_events_accepted_total{{event_type="{event_type}"}}'
    assert metric(fresh_metrics(service.url), line) == 10
    master = psutil.Process(service.api_pid)
    before = {p.pid for p in master.children()}
    assert len(before) == 2
    victim = min(before)
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        now = {p.pid for p in master.children()}
        return victim not in now and len(now) == 2

    wait_until(replaced, timeout=60, message="gunicorn did not replace the worker")
    wait_http(service.url + "/health", timeout=30)

    def live_api_processes() -> float:
        return metric(get(service.url + "/metrics")[1], 'analytics_processes{component="api"}')

    # The replacement reports once its app is built; the dead worker no longer counts
    # (child_exit -> mark_process_dead): two live processes, not three.
    (newcomer,) = {p.pid for p in master.children()} - before
    mp_dir = default_metrics_base(service.data_dir) / "api"
    wait_until(
        lambda: any(mp_dir.glob(f"gauge_livesum_{newcomer}.db")), timeout=60,
        message="the replacement worker wrote no metrics",
    )  # fmt: skip
    wait_until(lambda: live_api_processes() >= 2, timeout=60, message="replacement silent")
    text = get(service.url + "/metrics")[1]
    assert metric(text, 'analytics_processes{component="api"}') == 2
    # Counters keep what the dead worker counted.
    assert metric(text, line) == 10
