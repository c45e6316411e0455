"""Dramatiq observability middleware on a StubBroker: correlation context, task metrics."""

from __future__ import annotations

import io
import json
import sys

import dramatiq
import pytest
import structlog
from dramatiq.brokers.stub import StubBroker
from prometheus_client import REGISTRY

from analytics.entrypoints.logs import configure_logging
from analytics.entrypoints.telemetry import CorrelationContext, TaskMetrics, install
from analytics.settings import Settings

pytestmark = pytest.mark.unit


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    configure_logging("INFO", "json")
    return buf


@pytest.fixture
def broker(tmp_path):
    broker = StubBroker()
    broker.emit_after("process_boot")
    install(broker, Settings(broker="stub", storage="memory", data_dir=tmp_path), worker=False)
    yield broker
    broker.flush_all()
    broker.close()


def run(broker: StubBroker, queue: str = "default") -> None:
    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    try:
        broker.join(queue, fail_fast=False)
        worker.join()
    finally:
        worker.stop()


def test_correlation_middleware_is_first_so_its_context_covers_the_others(broker):
    assert isinstance(broker.middleware[0], CorrelationContext)
    assert any(isinstance(m, TaskMetrics) for m in broker.middleware)


def test_ids_travel_into_messages_and_bind_to_the_worker_logs_then_clear(broker, logs):
    log = structlog.get_logger("analytics.test")
    seen: list[dict[str, object]] = []

    @dramatiq.actor(broker=broker, queue_name="default", actor_name="obs_probe")
    def obs_probe(n: int) -> None:
        seen.append(dict(structlog.contextvars.get_contextvars()))
        log.info("inside actor", n=n)

    # Enqueued inside a request context: the id goes into the message options.
    structlog.contextvars.bind_contextvars(correlation_id="req-abc")
    message = obs_probe.send(1)
    structlog.contextvars.clear_contextvars()
    assert message.options["correlation_ids"] == ["req-abc"]
    # A group message carries several ids; a message without any binds none.
    obs_probe.send_with_options(args=(2,), correlation_ids=["a-1", "b-2"])
    obs_probe.send(3)
    run(broker)

    assert len(seen) == 3
    ctx = {json.dumps(s, sort_keys=True) for s in seen}
    assert any('"correlation_id": "req-abc"' in c for c in ctx)
    assert any('"correlation_ids": ["a-1", "b-2"]' in c for c in ctx)
    # No leak from one message to the next (threads are reused).
    assert sum("correlation" in c for c in ctx) == 2
    lines = [json.loads(x) for x in logs.getvalue().splitlines() if x.startswith("{")]
    inside = {line["n"]: line for line in lines if line.get("event") == "inside actor"}
    assert inside[1]["correlation_id"] == "req-abc"
    assert inside[2]["correlation_ids"] == ["a-1", "b-2"]
    assert "correlation_id" not in inside[3] and "correlation_ids" not in inside[3]
    assert inside[1]["actor"] == "obs_probe"
    # Cleared after the message: this thread's context holds nothing now.
    assert structlog.contextvars.get_contextvars() == {}


def test_task_metrics_count_success_failure_retries_and_dead_letters(broker):
    labels = {"actor": "obs_flaky", "queue": "default"}
    before = {
        "ok": sample("analytics_tasks_processed_total", outcome="succeeded", **labels),
        "fail": sample("analytics_tasks_processed_total", outcome="failed", **labels),
        "retry": sample("analytics_task_retries_total", **labels),
        "dead": sample("analytics_tasks_dead_lettered_total", **labels),
        "dur": sample("analytics_task_duration_seconds_count", **labels),
        "enq": sample("analytics_tasks_enqueued_total", **labels),
    }

    @dramatiq.actor(
        broker=broker, queue_name="default", actor_name="obs_flaky",
        max_retries=2, min_backoff=1, max_backoff=2,
    )  # fmt: skip
    def obs_flaky(fail: bool) -> None:
        if fail:
            raise RuntimeError("boom")

    obs_flaky.send(False)
    obs_flaky.send(True)  # 1 run + 2 retries, then dead-lettered
    run(broker)

    assert (
        sample("analytics_tasks_processed_total", outcome="succeeded", **labels) == before["ok"] + 1
    )
    assert (
        sample("analytics_tasks_processed_total", outcome="failed", **labels) == before["fail"] + 3
    )
    assert sample("analytics_task_retries_total", **labels) == before["retry"] + 2
    assert sample("analytics_tasks_dead_lettered_total", **labels) == before["dead"] + 1
    assert sample("analytics_task_duration_seconds_count", **labels) == before["dur"] + 4
    assert sample("analytics_tasks_enqueued_total", **labels) == before["enq"] + 2
    assert sample("analytics_tasks_in_progress") == 0


def test_process_events_results_feed_the_stored_and_duplicate_counters(broker):
    stored = sample("analytics_events_stored_total")
    dups = sample("analytics_events_duplicates_total", stage="store")

    @dramatiq.actor(broker=broker, queue_name="default", actor_name="process_events")
    def process_events(payload: str) -> dict[str, int]:
        return {"stored": 3, "duplicates": 2}

    process_events.send("x")
    run(broker)
    assert sample("analytics_events_stored_total") == stored + 3
    assert sample("analytics_events_duplicates_total", stage="store") == dups + 2


def test_the_results_middleware_warning_is_not_logged_but_other_warnings_are(logs):
    import logging

    worker_log = logging.getLogger("dramatiq.worker.WorkerThread")
    seen: list[str] = []  # a logger-level filter sees every record the logger makes

    class Seen(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            seen.append(record.getMessage())
            return True

    worker_log.addFilter(probe := Seen())
    worker_log.warning(
        "Actor '%s' returned a value that is not None, and you haven't added the Results "
        "middleware to the broker", "process_events",
    )  # fmt: skip
    worker_log.warning("something else")
    worker_log.removeFilter(probe)
    out = logs.getvalue()
    assert "something else" in out
    assert "returned a value" not in out
    assert seen == ["something else"]  # dropped before a record was made (its cost)


def test_a_failed_message_is_logged_by_actor_and_id_not_with_its_events(broker, logs):
    """A group message's text is every event it carries (hundreds of KB, user ids
    included); each failure logged it whole. A short one too: user ids in a log (QA)."""

    @dramatiq.actor(broker=broker, queue_name="default", actor_name="obs_fails", max_retries=0)
    def obs_fails(rows: list[str]) -> None:
        raise RuntimeError("storage down")

    big = obs_fails.send([f"user-{i}" for i in range(5_000)])
    small = obs_fails.send(["one"])
    run(broker)
    lines = [json.loads(x) for x in logs.getvalue().splitlines() if x.startswith("{")]
    failed = [line["event"] for line in lines if "Failed to process message" in line["event"]]
    assert len(failed) == 2, failed
    assert f"obs_fails(...) id={big.message_id} " in " ".join(failed)
    assert "user-4999" not in logs.getvalue()
    assert f"obs_fails(...) id={small.message_id} " in " ".join(failed)
    assert "'one'" not in logs.getvalue()
    assert all(len(f) < 500 for f in failed)
