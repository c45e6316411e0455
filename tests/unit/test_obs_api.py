"""Observability of the API in-process: request/business metrics, correlation ids, secrets,
profiling. Falcon TestClient over the real app with fakes (stub broker, memory storage)."""

from __future__ import annotations

import io
import json
import logging
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import falcon.testing
import pytest
import structlog
from prometheus_client import REGISTRY

from analytics.bootstrap import bootstrap
from analytics.domain.events import Event
from analytics.entrypoints.api import observability
from analytics.entrypoints.api.app import create_wsgi_app
from analytics.entrypoints.logs import configure_logging
from analytics.settings import Settings

pytestmark = pytest.mark.unit

EVENTS = "/api/v1/analytics/events"
BATCH = "/api/v1/analytics/events/batch"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class SlowQueue:
    """A task queue that takes a while: makes a request slow enough to be profiled."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.sent: list[Event] = []

    def enqueue_events(self, events: Sequence[Event]) -> str:
        time.sleep(self.delay_s)
        self.sent.extend(events)
        return "task-1"


def make_client(tmp_path: Path, **overrides: object) -> tuple[falcon.testing.TestClient, SlowQueue]:
    settings = Settings(
        auth="disabled", broker="stub", storage="memory", data_dir=tmp_path, **overrides
    )
    queue = SlowQueue(float(overrides.pop("_delay", 0.0)) if "_delay" in overrides else 0.0)
    container = bootstrap(settings, task_queue=queue)
    return falcon.testing.TestClient(create_wsgi_app(container)), queue


@pytest.fixture
def client(tmp_path: Path) -> falcon.testing.TestClient:
    return make_client(tmp_path)[0]


def purchase(**extra: object) -> dict[str, object]:
    return {
        "event_type": "purchase", "user_id": "u1", "session_id": "s1", "product_id": "p1",
        "price": "12.50", "quantity": 2, "currency": "EUR", **extra,
    }  # fmt: skip


def test_clients_cannot_add_event_type_series_without_end(tmp_path):
    """Event types are the client's words: past ANALYTICS_METRICS_EVENT_TYPES distinct ones
    a process counts new types as "_other" (QA: 24,000 types made /metrics 2.6 MB and a
    scrape 0.7 s), and every accepted event is still counted once."""
    client, _ = make_client(tmp_path, metrics_event_types=3)
    prefix = f"cardinality_{tmp_path.name[-6:].lower()}_"
    names = [f"{prefix}{i}" for i in range(6)]
    other = sample("analytics_events_accepted_total", event_type="_other")
    events = [{"event_type": n, "user_id": "u", "session_id": "s"} for n in names for _ in range(2)]
    assert client.simulate_post(BATCH, json={"events": events}).status_code == 202
    assert client.simulate_post(EVENTS, json=events[-1]).status_code == 202  # the lane too
    text = client.simulate_get("/metrics").text
    labelled = [n for n in names if f'event_type="{n}"' in text]
    assert len(labelled) == 3, labelled  # the first three met
    assert sum(sample("analytics_events_accepted_total", event_type=n) for n in labelled) == 6
    assert sample("analytics_events_accepted_total", event_type="_other") == other + 7
    # A fresh app (a new process in production) starts its own count.
    fresh, _ = make_client(tmp_path / "b", metrics_event_types=3)
    views = sample("analytics_events_accepted_total", event_type="page_view")
    assert fresh.simulate_post(EVENTS, json={**events[-1], "event_type": "page_view"}).status_code == 202
    assert sample("analytics_events_accepted_total", event_type="page_view") == views + 1


def test_the_event_type_limit_holds_across_the_workers_of_one_metrics_dir(tmp_path):
    """Dead workers' counter files stay until the API restarts and gunicorn recycles its
    workers, so a limit per process let every new worker name 100 more types (review).
    The named types are shared through the metrics directory: a recycled worker gets the
    types named before it, and nothing new once they are all taken."""
    from analytics.entrypoints import metrics

    made: list[str] = []
    shared = metrics.SharedNames(tmp_path / "event_types.names", 3)

    def worker() -> metrics.BoundedLabel:
        return metrics.BoundedLabel(lambda v: made.append(v) or v, 3, shared)

    first = worker()
    assert [first(t) for t in ("a", "b", "a", "c", "d")] == ["a", "b", "a", "c", "_other"]
    recycled = worker()  # a new gunicorn worker, same directory
    assert [recycled(t) for t in ("e", "c", "f", "a")] == ["_other", "c", "_other", "a"]
    assert set(made) == {"a", "b", "c", "_other"}  # never a fourth type's series
    assert (tmp_path / "event_types.names").read_text().split() == ["a", "b", "c"]
    alone = metrics.BoundedLabel(str, 0)  # ANALYTICS_METRICS_EVENT_TYPES=0: none named
    assert alone("a") == "_other"
    # The directory gone (or /dev/shm full): counted as _other, never an error after the
    # event was queued.
    gone = metrics.BoundedLabel(str, 3, metrics.SharedNames(tmp_path / "gone" / "x.names", 3))
    assert gone("a") == "_other"


def test_request_metrics_use_the_route_template_method_and_status(client):
    route = "/api/v1/analytics/events"
    before = sample("analytics_http_requests_total", route=route, method="POST", status="202")
    before_h = sample(
        "analytics_http_request_duration_seconds_count", route=route, method="POST", status="202"
    )
    for _ in range(3):
        assert client.simulate_post(EVENTS, json=purchase()).status_code == 202
    assert (
        sample("analytics_http_requests_total", route=route, method="POST", status="202")
        == before + 3
    )
    assert (
        sample(
            "analytics_http_request_duration_seconds_count",
            route=route,
            method="POST",
            status="202",
        )
        == before_h + 3
    )
    # Unknown paths share one label value instead of one series per raw path.
    before_404 = sample(
        "analytics_http_requests_total", route="unmatched", method="GET", status="404"
    )
    client.simulate_get("/no/such/path/12345")
    client.simulate_get("/no/such/path/67890")
    assert (
        sample("analytics_http_requests_total", route="unmatched", method="GET", status="404")
        == before_404 + 2
    )
    text = client.simulate_get("/metrics").text
    assert "/no/such/path" not in text


def test_business_metrics_accepted_rejected_duplicates_revenue(client):
    acc = sample("analytics_events_accepted_total", event_type="purchase")
    rev = sample("analytics_revenue_total", currency="EUR")
    rule = sample("analytics_events_rejected_total", rule="purchase_requires_product")
    iso = sample("analytics_events_rejected_total", rule="iso_4217")
    js = sample("analytics_events_rejected_total", rule="json")
    dup = sample("analytics_events_duplicates_total", stage="ingest")

    assert client.simulate_post(EVENTS, json=purchase()).status_code == 202
    bad = purchase()
    del bad["product_id"]
    assert client.simulate_post(EVENTS, json=bad).status_code == 422
    assert (
        client.simulate_post(
            EVENTS, body=b"{not json", headers={"Content-Type": "application/json"}
        ).status_code
        == 400
    )
    same = "0b3f6a56-6f1e-4b57-9d0e-0d6a2b8c9f11"
    batch = {"events": [purchase(event_id=same), purchase(event_id=same), purchase(currency="XYZ")]}
    assert client.simulate_post(BATCH, json=batch).status_code == 202

    assert sample("analytics_events_accepted_total", event_type="purchase") == acc + 2
    assert sample("analytics_revenue_total", currency="EUR") == pytest.approx(rev + 50.0)
    assert sample("analytics_events_rejected_total", rule="purchase_requires_product") == rule + 1
    assert sample("analytics_events_rejected_total", rule="iso_4217") == iso + 1
    assert sample("analytics_events_rejected_total", rule="json") == js + 1
    assert sample("analytics_events_duplicates_total", stage="ingest") == dup + 1


def test_metrics_endpoint_serves_prometheus_text(client):
    resp = client.simulate_get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    for name in (
        "analytics_system_cpu_percent",
        "analytics_system_memory_used_ratio",
        "analytics_system_disk_used_ratio",
        "analytics_process_resident_memory_bytes",
        "analytics_process_open_fds",
        "analytics_http_requests_in_progress",
    ):
        assert f"\n{name}" in resp.text, name


@pytest.mark.parametrize(
    ("given", "echoed"),
    [
        ("req-123_abc.DEF", True),
        ("a" * 64, True),
        ("a" * 65, False),  # oversized
        ("bad id with spaces", False),
        ("<script>alert(1)</script>", False),
        ("", False),
    ],
)
def test_correlation_id_is_taken_when_valid_and_replaced_otherwise(client, given, echoed):
    resp = client.simulate_post(EVENTS, json=purchase(), headers={"X-Correlation-ID": given})
    assert resp.status_code == 202
    cid = resp.headers["X-Correlation-ID"]
    assert resp.json["correlation_id"] == cid
    if echoed:
        assert cid == given
    else:
        assert cid != given and (not given or given not in resp.text)
        assert len(cid) == 32 and cid.isalnum()


def capture_logs(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    configure_logging("INFO", "json")
    return buf


def lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.startswith("{")]


def test_one_json_access_line_per_request_with_route_status_duration_and_id(tmp_path, monkeypatch):
    buf = capture_logs(monkeypatch)
    client = make_client(tmp_path)[0]
    client.simulate_post(EVENTS, json=purchase(), headers={"X-Correlation-ID": "trace-1"})
    client.simulate_get("/health")
    access = [x for x in lines(buf) if x.get("event") == "request"]
    assert [(a["route"], a["status"], a["correlation_id"]) for a in access][:1] == [
        ("/api/v1/analytics/events", 202, "trace-1")
    ]
    assert len(access) == 2
    assert all(isinstance(a["duration_ms"], float) for a in access)
    # Context is cleared per request: the second request has its own, new id.
    assert access[1]["correlation_id"] != "trace-1"


def test_no_access_line_below_its_level(tmp_path, monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    configure_logging("WARNING", "json")
    client = make_client(tmp_path)[0]
    assert client.simulate_post(EVENTS, json=purchase()).status_code == 202
    structlog.get_logger("analytics.test").warning("still written")
    assert [x["event"] for x in lines(buf)] == ["still written"]


def test_a_server_failure_is_logged_at_warning_and_a_breaker_opening_too(tmp_path, monkeypatch):
    """At the WARNING level the access log is silent, but a 5xx is the service's failure
    (it was an INFO line like any 202); the breaker opening on it said nothing at all."""
    from analytics.domain.errors import QueueUnavailable  # noqa: PLC0415

    class DownQueue:
        def enqueue_events(self, events: Sequence[Event]) -> str:
            raise QueueUnavailable("the broker did not confirm the enqueue (test)")

    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    configure_logging("WARNING", "json")
    settings = Settings(auth="disabled", broker="stub", storage="memory", data_dir=tmp_path,
                        breaker_failure_threshold=2)  # fmt: skip
    client = falcon.testing.TestClient(
        create_wsgi_app(bootstrap(settings, task_queue=DownQueue()))  # type: ignore[arg-type]
    )
    statuses = [client.simulate_post(EVENTS, json=purchase()).status_code for _ in range(3)]
    assert statuses == [503, 503, 503]
    logged = lines(buf)
    access = [x for x in logged if x.get("event") == "request"]
    assert [(a["status"], a["level"]) for a in access] == [(503, "warning")] * 3
    opened = [x for x in logged if x.get("event") == "circuit breaker opened"]
    assert [(x["breaker"], x["level"]) for x in opened] == [("broker", "warning")]


def test_secrets_are_never_logged(tmp_path, monkeypatch):
    buf = capture_logs(monkeypatch)
    client = make_client(tmp_path)[0]
    secret = "sk_live_SUPERSECRET_0123456789"
    client.simulate_post(
        EVENTS,
        json=purchase(),
        headers={"Authorization": f"Bearer {secret}", "X-API-Key": secret},
        params={"api_key": secret},
    )
    log = structlog.get_logger("analytics.test")
    log.info("settings", api_key=secret, redis_password=secret, authorization=f"Bearer {secret}")
    log.info("nested", x_api_key=secret, token=secret)
    s = Settings(redis_password=secret)
    log.info("settings object", settings=repr(s))
    out = buf.getvalue()
    assert out, "nothing was logged"
    assert secret not in out
    assert "[redacted]" in out


def test_an_authenticated_requests_log_lines_name_its_key_id(monkeypatch):
    from tests.support import ApiHarness  # noqa: PLC0415

    buf = capture_logs(monkeypatch)
    h = ApiHarness()  # auth required
    headers = h.headers()
    secret = headers["Authorization"].removeprefix("Bearer ")
    key_id = h.keys.list()[0].key_id
    assert h.client.simulate_post(EVENTS, json=purchase(), headers=headers).status_code == 202
    access = [x for x in lines(buf) if x.get("event") == "request"]
    assert access and access[-1]["api_key_id"] == key_id  # who sent it: readable
    assert secret not in buf.getvalue()  # the key itself: never


def test_profiling_is_not_installed_when_off(tmp_path):
    settings = Settings(auth="disabled", broker="stub", storage="memory", data_dir=tmp_path)
    assert settings.profile_slow_ms == 0
    kinds = [type(m) for m in observability.observability_middleware(settings)]
    assert observability.ProfilingMiddleware not in kinds
    on = settings.model_copy(update={"profile_slow_ms": 5})
    assert observability.ProfilingMiddleware in [
        type(m) for m in observability.observability_middleware(on)
    ]


def test_slow_critical_requests_are_profiled_to_the_profile_dir(tmp_path):
    profiles = tmp_path / "profiles"
    settings = Settings(
        auth="disabled",
        broker="stub",
        storage="memory",
        data_dir=tmp_path,
        profile_slow_ms=20,
        profile_dir=profiles,
    )
    slow = SlowQueue(delay_s=0.05)
    client = falcon.testing.TestClient(create_wsgi_app(bootstrap(settings, task_queue=slow)))
    resp = client.simulate_post(EVENTS, json=purchase(), headers={"X-Correlation-ID": "slow-1"})
    assert resp.status_code == 202
    html = list(profiles.glob("*.html"))
    assert len(html) == 1
    assert "slow-1" in html[0].name and "api_v1_analytics_events" in html[0].name
    text = html[0].with_suffix(".txt").read_text()
    assert "enqueue_events" in text
    # A fast request (below the threshold) and a non-critical route leave nothing.
    slow.delay_s = 0.0
    client.simulate_get("/health")
    assert len(list(profiles.glob("*.html"))) == 1


def test_a_cache_adapters_hit_and_miss_counts_become_counters():
    from analytics.entrypoints import metrics as m

    class CountingCache:
        hits = misses = errors = 0

    cache = CountingCache()
    m.watch_cache("obs_test", cache)
    m.watch_cache("obs_test", cache)  # once only
    cache.hits, cache.misses = 5, 2
    m.sync_caches()
    cache.hits, cache.errors = 7, 1
    m.sync_caches()
    m.sync_caches()
    assert sample("analytics_cache_requests_total", kind="obs_test", result="hit") == 7
    assert sample("analytics_cache_requests_total", kind="obs_test", result="miss") == 2
    assert sample("analytics_cache_requests_total", kind="obs_test", result="error") == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-02T03:04:05+00:00", 1767323045.0),
        ("2026-01-02T03:04:05Z", 1767323045.0),
        ("1767323045.5", 1767323045.5),
        ('{"at": "2026-01-02T03:04:05Z", "job": "rollup"}', 1767323045.0),
        ("not a time", None),
    ],
)
def test_scheduler_last_run_formats(text, expected):
    from analytics.adapters.redis_probe import parse_instant

    assert parse_instant(text) == expected


def test_queue_depths_come_from_the_broker_in_use(tmp_path):
    import dramatiq

    settings = Settings(auth="disabled", broker="stub", storage="memory", data_dir=tmp_path)
    container = bootstrap(settings, task_queue=SlowQueue())
    broker = container.broker
    for _ in range(2):
        broker.enqueue(dramatiq.Message("maintenance", "obs_x", (), {}, {}))
    broker.enqueue(dramatiq.Message("maintenance", "obs_x", (), {}, {}), delay=60_000)
    client = falcon.testing.TestClient(create_wsgi_app(container))
    text = client.simulate_get("/metrics").text
    assert 'analytics_queue_depth{queue="maintenance"} 2.0' in text
    assert 'analytics_queue_depth{queue="maintenance.DQ"} 1.0' in text
    assert 'analytics_queue_depth{queue="maintenance.XQ"} 0.0' in text
    body = client.simulate_get("/health/detailed").json
    assert body["queues"]["maintenance"] == {"ready": 2, "delayed": 1, "dead": 0}


def test_the_dashboard_cache_hits_and_misses_reach_metrics(tmp_path):
    settings = Settings(
        auth="disabled", broker="stub", storage="memory", data_dir=tmp_path, cache_backend="memory"
    )
    container = bootstrap(settings, task_queue=SlowQueue())
    assert container.cache is not None
    client = falcon.testing.TestClient(create_wsgi_app(container))
    hit = sample("analytics_cache_requests_total", kind="aggregates", result="hit")
    miss = sample("analytics_cache_requests_total", kind="aggregates", result="miss")
    window = {"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T06:00:00Z"}
    for _ in range(3):
        resp = client.simulate_get("/api/v1/analytics/dashboard/metrics", params=window)
        assert resp.status_code == 200, resp.text
    client.simulate_get("/metrics")  # a scrape syncs the adapter's counts
    assert sample("analytics_cache_requests_total", kind="aggregates", result="hit") > hit
    assert sample("analytics_cache_requests_total", kind="aggregates", result="miss") > miss
    assert container.cache.hits > 0


def test_detailed_health_checks_sns_through_the_notifiers_client(tmp_path):
    class FakeSns:
        def __init__(self) -> None:
            self.fail = False
            self.calls: list[str] = []

        def get_topic_attributes(self, TopicArn: str) -> dict[str, object]:  # noqa: N803
            self.calls.append(TopicArn)
            if self.fail:
                raise ConnectionError("sns unreachable")
            return {"Attributes": {}}

    class Notifier:
        def __init__(self, client: FakeSns) -> None:
            self.client = client
            self.topic_arn = "arn:aws:sns:eu-central-1:123456789012:analytics"

    settings = Settings(auth="disabled", broker="stub", storage="memory", data_dir=tmp_path)
    container = bootstrap(settings, task_queue=SlowQueue())
    sns = FakeSns()
    container.extras["notifier"] = Notifier(sns)
    client = falcon.testing.TestClient(create_wsgi_app(container))
    body = client.simulate_get("/health/detailed").json
    assert body["checks"]["sns"]["status"] == "ok"
    assert sns.calls == ["arn:aws:sns:eu-central-1:123456789012:analytics"]
    sns.fail = True
    resp = client.simulate_get("/health/detailed")
    assert resp.status_code == 200  # SNS down degrades; ingest still works
    assert resp.json["status"] == "degraded"
    assert resp.json["checks"]["sns"]["status"] == "down"
    assert "sns down" in resp.json["reasons"]


def test_every_line_is_json_whatever_the_values(monkeypatch):
    """Values JSON has no type for are logged as their repr, stdlib records too; a line
    is never dropped or broken by what it carries."""
    buf = capture_logs(monkeypatch)
    log = structlog.get_logger("analytics.test")
    marker = object()
    log.info("odd values", amount=Decimal("19.99"), when=datetime(2026, 1, 2, tzinfo=UTC),
             thing=marker, error=ValueError("boom"), ids={7}, text="ünïcode \"quoted\"\n")  # fmt: skip
    log.info("odd keys", **{"weird key": 1})
    structlog.get_logger("analytics.test").bind(nested={(1, 2): "tuple key"}).warning("nested")
    logging.getLogger("dramatiq.test").warning("stdlib %s", "record")
    got = lines(buf)
    assert [g["event"] for g in got] == ["odd values", "odd keys", "nested", "stdlib record"]
    first = got[0]
    assert first["amount"] == "19.99" and first["when"].startswith("2026-01-02T00:00:00")
    assert first["thing"] == repr(marker) and first["error"] == "ValueError('boom')"
    assert first["ids"] == [7] and first["text"] == "ünïcode \"quoted\"\n"
    assert got[2]["nested"] == {"(1, 2)": "tuple key"} and got[3]["level"] == "warning"


def test_python_warnings_are_json_lines_too(monkeypatch):
    """A library's warning goes through logging (``py.warnings``), not as text to stderr."""
    import warnings  # noqa: PLC0415

    # An earlier test's configure_logging captured them already, and pytest has put its
    # own warnings.showwarning back since: start from logging's "not captured" state.
    logging.captureWarnings(False)
    buf = capture_logs(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a library is unhappy", UserWarning, stacklevel=1)
    (line,) = [g for g in lines(buf) if g.get("logger") == "py.warnings"]
    assert "UserWarning: a library is unhappy" in str(line["event"])
    assert line["level"] == "warning"
    assert all(text.startswith("{") for text in buf.getvalue().splitlines() if text.strip())


def test_unreadable_heartbeats_make_the_health_degraded() -> None:
    """The per-queue worker rule read a failed heartbeat read as no queue at all: "ok"
    where the rule before it said degraded (a review)."""
    from analytics.entrypoints.api.observability import _unserved_queues  # noqa: PLC0415

    unknown = {"status": "unknown", "error": "Timeout reading from socket"}
    assert _unserved_queues(unknown, {}) == ["worker heartbeats unknown"]
    assert _unserved_queues(None, {}) == []  # Redis down: the check says so already
    idle = {"high_priority": {"status": "ok"}, "notifications": {"status": "missing"}}
    assert _unserved_queues(idle, {"notifications": {"ready": 0, "delayed": 0}}) == []
    assert _unserved_queues(idle, {"notifications": {"ready": 0, "delayed": 2}}) == [
        "no live worker for notifications (2 messages waiting)"]  # fmt: skip


def test_scrapes_within_a_second_share_one_rendering(tmp_path, monkeypatch):
    """An open /metrics is exempt from the anonymous rate limit, and each rendering costs
    tens of ms of CPU: a flood of scrapes must cost what one a second does (security
    review: 33 ms each, unlimited)."""
    from analytics.entrypoints.api.observability import MetricsResource  # noqa: PLC0415

    assert MetricsResource.fresh_s == 1.0  # README: values at most a second old
    client, _ = make_client(tmp_path)
    monkeypatch.setattr(MetricsResource, "fresh_s", 3600.0)
    first = client.simulate_get("/metrics").text
    assert client.simulate_post(EVENTS, json=purchase()).status_code == 202
    assert client.simulate_get("/metrics").text == first  # the same rendering, not a new one
    monkeypatch.setattr(MetricsResource, "fresh_s", 0.0)
    assert client.simulate_get("/metrics").text != first


def test_pika_says_each_kind_of_failure_once_every_ten_seconds(monkeypatch):
    """A RabbitMQ outage: pika wrote a dozen lines per failed reconnect, 1,374 in 50 s (QA)."""
    buf = capture_logs(monkeypatch)
    workflow = logging.getLogger("pika.adapters.utils.connection_workflow")
    for attempt in range(20):
        workflow.info("Pika version %s connecting to %s", "1.3", "127.0.0.1:5672")
        workflow.error("AMQP connection workflow failed: %r", f"denied, attempt {attempt}")
    logging.getLogger("pika.adapters.blocking_connection").error("Connection workflow failed: %r", "x")
    logging.getLogger("pika.adapters.select_connection").error("Connection workflow failed: %r", "y")
    for _ in range(2):
        workflow.warning("Socket closed: %s", "reset")
        logging.getLogger("analytics.other").error("not pika: %s", "kept")
    events = [x["event"] for x in lines(buf)]
    assert events == ["AMQP connection workflow failed: 'denied, attempt 0'",
                      "Connection workflow failed: 'x'", "Connection workflow failed: 'y'",
                      "Socket closed: reset", "not pika: kept", "not pika: kept"]  # fmt: skip
    assert logging.getLogger("pika").level == logging.WARNING  # INFO records not built
    # At DEBUG an operator asked for everything: pika's lines too (review).
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    configure_logging("DEBUG", "json")
    for _ in range(3):
        workflow.info("Pika version %s connecting to %s", "1.3", "127.0.0.1:5672")
    assert len([x for x in lines(buf) if x["event"].startswith("Pika version")]) == 3
