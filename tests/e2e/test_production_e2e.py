"""The production shape as real processes: ``analytics init``, then ``analytics api`` and
``analytics worker`` on DynamoDB + SNS (a moto server over HTTP), with Redis or RabbitMQ as
the broker. Events go in over HTTP and come out of DynamoDB, of search, and of SNS."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from analytics.adapters.aws import sns_client
from analytics.bootstrap import build_event_repo
from analytics.settings import Settings
from tests.support import (
    AnalyticsProcess,
    analytics_cmd,
    child_env,
    free_port,
    http_json,
    running,
    wait_until,
)

pytestmark = pytest.mark.e2e


@dataclass
class Stack:
    base: str
    env: dict[str, str]
    settings: Settings
    queue: tuple[Any, str]  # SQS client and URL subscribed to the topic (raw delivery)
    logs: list[Path]


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def stack(
    request: pytest.FixtureRequest, moto_server: Any, redis_server: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:  # fmt: skip
    tag = uuid.uuid4().hex[:10]
    namespace = f"t-{tag}"
    env = child_env(
        **moto_server.env(), **redis_server.env(namespace),
        ANALYTICS_STORAGE="dynamodb", ANALYTICS_BROKER=request.param,
        ANALYTICS_EVENTS_TABLE=f"e2e-events-{tag}", ANALYTICS_AGGREGATES_TABLE=f"e2e-agg-{tag}",
        ANALYTICS_SNS_TOPIC_ARN=f"arn:aws:sns:us-east-1:123456789012:e2e-{tag}",
        ANALYTICS_SNS_NOTIFY_EVENT_TYPES="purchase,signup",
        ANALYTICS_WEB_WORKERS="1", ANALYTICS_WEB_THREADS="4", ANALYTICS_WORKER_THREADS="2",
        ANALYTICS_HEARTBEAT_TIMEOUT_S="5", ANALYTICS_CURSOR_SECRET="e2e-cursor-secret-" + tag,
        ANALYTICS_DATA_DIR=str(tmp_path_factory.mktemp(f"data-{request.param}")), ANALYTICS_AUTH="disabled", ANALYTICS_LOG_LEVEL="WARNING",
    )  # fmt: skip
    if request.param == "rabbitmq":
        env["RABBITMQ_URL"] = request.getfixturevalue("rabbitmq_url")
    settings = Settings.from_env(env)
    logdir = tmp_path_factory.mktemp(f"prod-{request.param}")

    # Before init: the API refuses to start and says what is missing and what to run.
    port = free_port()
    env["ANALYTICS_PORT"] = str(port)
    refused = subprocess.run(analytics_cmd("api"), env=env, capture_output=True, timeout=60,
                             check=False)  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    message = refused.stderr.decode()
    assert settings.events_table in message and "analytics init" in message, message
    # serve too: one line and exit 2, where it restarted its api and worker every ~2 s.
    refused = subprocess.run(analytics_cmd("serve", "--port", str(port)), env=env,
                             capture_output=True, timeout=60, check=False)  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert settings.events_table in refused.stderr.decode(), refused.stderr

    first = subprocess.run(analytics_cmd("init"), env=env, capture_output=True, timeout=120,
                           check=True)  # fmt: skip
    assert f"created table {settings.events_table}" in first.stdout.decode()
    again = subprocess.run(analytics_cmd("init"), env=env, capture_output=True, timeout=120,
                           check=True)  # fmt: skip
    assert "nothing to do" in again.stdout.decode()

    sqs = boto3.client("sqs", endpoint_url=moto_server.endpoint_url, region_name="us-east-1")
    url = sqs.create_queue(QueueName=f"e2e-sub-{tag}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    assert settings.sns_topic_arn
    sns_client(settings).subscribe(TopicArn=settings.sns_topic_arn, Protocol="sqs", Endpoint=arn,
                                   Attributes={"RawMessageDelivery": "true"})  # fmt: skip

    logs = [logdir / "worker.log", logdir / "api.log"]
    worker = AnalyticsProcess(
        "worker", "--queues", "high_priority,notifications,aggregations", "--processes", "1",
        env=env, log=logs[0],
    )  # fmt: skip
    api = AnalyticsProcess("api", env=env, log=logs[1])
    base = f"http://127.0.0.1:{port}"
    with running(worker, api):
        api.wait_http(f"{base}/health", timeout=60)
        yield Stack(base, env, settings, (sqs, url), logs)


def test_events_in_over_http_are_stored_in_dynamodb_once_and_announced(stack: Stack) -> None:
    ids = [str(uuid.uuid4()) for _ in range(40)]
    v1 = f"{stack.base}/api/v1/analytics"
    # All on one UTC day whenever the test runs: yesterday from 12:00.
    day0 = datetime.now(UTC).date() - timedelta(days=1)
    noon = datetime(day0.year, day0.month, day0.day, 12, tzinfo=UTC)
    for i, event_id in enumerate(ids[:5]):
        status, _, body = http_json("POST", f"{v1}/events", {
            "event_type": "purchase", "user_id": f"u{i}", "session_id": "s1",
            "product_id": "sku-1", "price": "19.99", "currency": "EUR", "event_id": event_id,
            "timestamp": (noon + timedelta(seconds=i)).isoformat()})  # fmt: skip
        assert status == 202, body
    batch = [{"event_type": "page_view", "user_id": "u9", "session_id": "s9", "event_id": e,
              "timestamp": (noon + timedelta(minutes=1, seconds=n)).isoformat()}
             for n, e in enumerate(ids[5:])]  # fmt: skip
    status, _, body = http_json("POST", f"{v1}/events/batch", {"events": batch})
    assert status == 202 and body["accepted"] == 35, body
    status, _, retry = http_json("POST", f"{v1}/events/batch", {"events": batch})  # a retry
    assert status == 202, retry

    # Both messages processed (in whichever order the workers took them) before anything
    # is counted: between them, the 35 events stored once and found once as duplicates.
    tasks = [body["background_task_id"], retry["background_task_id"]]

    def results() -> list[dict[str, Any]] | None:
        out = []
        for task_id in tasks:
            status, _, task = http_json("GET", f"{v1}/tasks/{task_id}/status")
            if status != 200 or task["status"] != "succeeded":
                return None
            out.append(task["result"])
        return out

    wait_until(lambda: results() is not None, timeout=60,
               message=f"the batch and its retry were not both processed; logs in {stack.logs}")  # fmt: skip
    done = results()
    assert done is not None
    assert sum(r["stored"] for r in done) == 35 and sum(r["duplicates"] for r in done) == 35, done

    repo = build_event_repo(stack.settings)
    wanted = [uuid.UUID(i) for i in ids]
    wait_until(lambda: len(repo.get_many(wanted)) == 40, timeout=60,
               message=f"stored {len(repo.get_many(wanted))} of 40; logs in {stack.logs}")  # fmt: skip
    stored = repo.get_many(wanted)
    assert str(stored[wanted[0]].total_value) == "19.99"
    assert repo.count() == 40  # the retried batch was not stored twice

    # Out again through search over HTTP, paged with the opaque cursor (DynamoDB indexes).
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params = "user_id=u9&limit=10" + (f"&cursor={cursor}" if cursor else "")
        status, _, page = http_json("GET", f"{v1}/events/search?{params}")
        assert status == 200, page
        seen += [item["event_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids[5:]) and len(seen) == 35
    status, _, page = http_json("GET", f"{v1}/events/search?"
                                     "event_type=purchase&product_id=sku-1")  # fmt: skip
    assert status == 200 and {i["event_id"] for i in page["items"]} == set(ids[:5])
    assert {i["total_value"] for i in page["items"]} == {"19.99"}

    # ... and through aggregations and the dashboard (exactly-once counters on DynamoDB).
    day = f"start={day0.isoformat()}&end={(day0 + timedelta(days=1)).isoformat()}"

    def counted() -> bool:
        status, _, body = http_json("GET", f"{v1}/aggregations/day?{day}")
        return status == 200 and body["buckets"][0]["count"] == 40

    wait_until(counted, timeout=90, message="aggregations did not reach 40")
    body = http_json("GET", f"{v1}/aggregations/day?{day}").body
    bucket = body["buckets"][0]
    assert (bucket["unique_users"], bucket["unique_sessions"]) == (6, 2)
    assert bucket["revenue"] == {"EUR": "99.95"}  # 5 x 19.99, the retried batch not twice
    window = f"start={noon.isoformat()}&end={(noon + timedelta(hours=1)).isoformat()}"
    status, _, dash = http_json("GET", f"{v1}/dashboard/metrics?"
                                     + window.replace("+", "%2B"))  # fmt: skip
    assert status == 200 and dash["total_events"] == 40, dash

    sqs, url = stack.queue
    got: list[dict[str, Any]] = []

    def received() -> bool:
        resp = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                   MessageAttributeNames=["All"])  # fmt: skip
        got.extend(resp.get("Messages", []))
        return len(got) >= 5

    wait_until(received, timeout=60, message=f"{len(got)} notifications; logs in {stack.logs}")
    # At least once: a retried batch processed while the original was being stored may
    # announce again; every purchase is announced and nothing else is.
    assert {m["MessageAttributes"]["event_id"]["StringValue"] for m in got} == set(ids[:5])
    assert {m["MessageAttributes"]["event_type"]["StringValue"] for m in got} == {"purchase"}
