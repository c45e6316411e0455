"""SNS notifications observed through an SQS queue subscribed with raw delivery (moto server)."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from dramatiq import Worker

from analytics.adapters import codec
from analytics.adapters.aws import sns_client
from analytics.adapters.dynamodb_schema import ensure_resources
from analytics.adapters.memory import InMemoryEventRepository
from analytics.adapters.sns_notifier import SnsNotifier
from analytics.bootstrap import bootstrap
from analytics.domain.clock import FixedClock
from analytics.entrypoints.actors import register_actors
from analytics.settings import Settings
from tests.aws_support import make_event

pytestmark = pytest.mark.integration


@pytest.fixture
def topic(moto_server: Any, aws_names: dict[str, str]) -> tuple[Settings, Any]:
    """The topic created by init, and an SQS queue subscribed to it with raw delivery."""
    settings = Settings.from_env({**moto_server.env(), **aws_names, "ANALYTICS_BROKER": "stub",
                                  "ANALYTICS_STORAGE": "memory"})  # fmt: skip
    ensure_resources(settings)
    sqs = boto3.client("sqs", endpoint_url=moto_server.endpoint_url, region_name="us-east-1")
    url = sqs.create_queue(QueueName=aws_names["ANALYTICS_EVENTS_TABLE"] + "-sub")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns_client(settings).subscribe(
        TopicArn=settings.sns_topic_arn, Protocol="sqs", Endpoint=arn,
        Attributes={"RawMessageDelivery": "true"}, ReturnSubscriptionArn=True,
    )  # fmt: skip
    return settings, (sqs, url)


def _drain(sqs: Any, url: str, want: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    for _ in range(20):
        resp = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                   MessageAttributeNames=["All"])  # fmt: skip
        got += resp.get("Messages", [])
        if len(got) >= want:
            break
    return got


def test_each_event_is_one_message_with_filterable_attributes(topic: Any) -> None:
    settings, (sqs, url) = topic
    events = [make_event(n, event_type="purchase", product_id=f"sku-{n}", price="9.99",
                         currency="EUR", correlation_id=f"corr-{n}") for n in range(12)]  # fmt: skip
    SnsNotifier(sns_client(settings), settings.sns_topic_arn).publish(events)  # 10 + 2
    messages = _drain(sqs, url, 12)
    assert len(messages) == 12
    by_id = {json.loads(m["Body"])["event_id"]: m for m in messages}
    for n, e in enumerate(events):
        m = by_id[str(e.event_id)]
        attrs = {k: v["StringValue"] for k, v in m["MessageAttributes"].items()}
        assert attrs["event_type"] == "purchase"
        assert attrs["correlation_id"] == f"corr-{n}"
        assert attrs["event_id"] == str(e.event_id)
        assert attrs["user_id"] == e.user_id and attrs["product_id"] == f"sku-{n}"
        assert attrs["currency"] == "EUR" and attrs["total_value"] == "9.99"
        assert m["MessageAttributes"]["total_value"]["DataType"] == "Number"
        assert json.loads(m["Body"])["total_value"] == "9.99"


def test_stored_events_of_configured_types_flow_through_the_notifications_queue(
    topic: Any,
) -> None:
    settings, (sqs, url) = topic
    repo = InMemoryEventRepository()
    container = bootstrap(settings, event_repo=repo, clock=FixedClock(make_event(0).timestamp))
    actors = register_actors(container)
    events = [
        make_event(1, event_type="purchase", product_id="sku-1"),
        make_event(2, event_type="page_view"),
        make_event(3, event_type="signup"),
    ]
    worker = Worker(container.broker, worker_timeout=50)
    worker.start()
    try:
        actors["process_events"].send(codec.encode(events).decode())
        container.broker.join("high_priority")
        container.broker.join("notifications")
        # Redelivery of the same group stores nothing new and announces nothing again.
        actors["process_events"].send(codec.encode(events).decode())
        container.broker.join("high_priority")
        container.broker.join("notifications")
    finally:
        worker.stop()
    messages = _drain(sqs, url, 2)
    types = sorted(m["MessageAttributes"]["event_type"]["StringValue"] for m in messages)
    assert types == ["purchase", "signup"]
    assert repo.count() == 3
