"""Notifications: which events are announced, and failures retried (fakes, StubBroker)."""

from __future__ import annotations

import random
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.stub import Stubber
from dramatiq import Worker

from analytics.adapters import codec
from analytics.adapters.aws import ResourceMissing
from analytics.adapters.dynamodb_events import Backoff
from analytics.adapters.memory import InMemoryEventRepository, InMemoryNotifier
from analytics.adapters.sns_notifier import SnsNotifier
from analytics.application.notify import select_notifiable
from analytics.bootstrap import bootstrap
from analytics.domain.errors import NotificationFailed
from analytics.entrypoints.actors import register_actors
from analytics.settings import Settings
from tests.aws_support import make_event

pytestmark = pytest.mark.unit
ARN = "arn:aws:sns:us-east-1:123456789012:t"


def test_only_configured_types_are_selected() -> None:
    events = [make_event(1, event_type="purchase", product_id="p"), make_event(2),
              make_event(3, event_type="signup")]  # fmt: skip
    assert select_notifiable(events, {"purchase", "signup"}) == [events[0], events[2]]
    assert select_notifiable(events, set()) == []


def test_a_failing_notifier_is_retried_until_it_takes_the_message() -> None:
    settings = Settings(broker="stub", storage="memory", sns_notify_event_types="purchase")
    notifier = InMemoryNotifier()
    notifier.fail_next = 2
    container = bootstrap(settings, event_repo=InMemoryEventRepository(), notifier=notifier)
    actors = register_actors(container)
    actors["publish_notifications"].options.update(min_backoff=10, max_backoff=20)
    event = make_event(1, event_type="purchase", product_id="p")
    worker = Worker(container.broker, worker_timeout=20)
    worker.start()
    try:
        actors["process_events"].send(codec.encode([event]).decode())
        container.broker.join("high_priority")
        container.broker.join("notifications")
    finally:
        worker.stop()
    assert notifier.published == [event] and notifier.fail_next == 0


def _sns() -> Any:
    return boto3.session.Session().client(
        "sns", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )  # fmt: skip


def test_entries_sns_reports_failed_are_resent_and_an_outage_raises() -> None:
    client = _sns()
    sleeps: list[float] = []
    notifier = SnsNotifier(client, ARN, backoff=Backoff(max_attempts=3, sleep=sleeps.append,
                                                        rng=random.Random(1)))  # fmt: skip
    events = [make_event(n) for n in range(3)]
    with Stubber(client) as stub:
        stub.add_response("publish_batch", {"Successful": [], "Failed": [
            {"Id": "1", "Code": "InternalError", "SenderFault": False}]})  # fmt: skip
        stub.add_response("publish_batch", {"Successful": [{"Id": "1", "MessageId": "m"}]})
        notifier.publish(events)
        stub.add_client_error("publish_batch", service_error_code="Throttled",
                              http_status_code=400)  # fmt: skip
        with pytest.raises(NotificationFailed, match="Throttled"):
            notifier.publish(events)
        stub.assert_no_pending_responses()
    assert len(sleeps) == 1


def test_a_worker_dying_between_announce_and_store_loses_no_notification() -> None:
    """Announce happens before the store: a crash in between re-announces on redelivery
    (at least once), and once stored nothing is announced again."""
    from analytics.application.notify import announce_unstored

    repo = InMemoryEventRepository()
    queued: list[list[Any]] = []
    purchase = make_event(1, event_type="purchase", product_id="p")
    events = [purchase, make_event(2), purchase]
    kwargs = {"repo": repo, "event_types": {"purchase"}, "enqueue": queued.append}
    assert announce_unstored(events, **kwargs) == [purchase]  # then the worker "dies"
    assert announce_unstored(events, **kwargs) == [purchase]  # redelivery: announced again
    repo.add_many(events)  # this attempt stores
    assert announce_unstored(events, **kwargs) == []  # a later redelivery or client retry
    assert queued == [[purchase], [purchase]]


def test_entries_still_failed_after_max_attempts_tries_raise() -> None:
    """Mutation QA: ``max_attempts`` bounds the PublishBatch calls of a chunk, the first
    one included: with 3, three calls and two backoff sleeps, then NotificationFailed (the
    actor retries the message later). One more call than configured kept the worker
    thread sleeping in backoff longer than the operator allowed."""
    client = _sns()
    sleeps: list[float] = []
    notifier = SnsNotifier(client, ARN, backoff=Backoff(max_attempts=3, sleep=sleeps.append,
                                                        rng=random.Random(1)))  # fmt: skip
    failed = {"Successful": [], "Failed": [
        {"Id": "0", "Code": "InternalError", "SenderFault": False}]}  # fmt: skip
    with Stubber(client) as stub:
        for _ in range(3):
            stub.add_response("publish_batch", failed)
        with pytest.raises(NotificationFailed, match=r"1 messages not taken after 3 tries"):
            notifier.publish([make_event(1)])
        stub.assert_no_pending_responses()
    assert len(sleeps) == 2


def test_a_missing_topic_is_reported_as_missing_not_as_a_failed_publish() -> None:
    """Mutation QA: SNS's NotFound means the topic does not exist: the error names the
    topic and the fix (``analytics init``) instead of a bare "sns publish: NotFound"
    that reads like a transient outage."""
    client = _sns()
    notifier = SnsNotifier(client, ARN, backoff=Backoff(max_attempts=3, sleep=lambda _: None))
    with Stubber(client) as stub:
        stub.add_client_error("publish_batch", service_error_code="NotFound",
                              http_status_code=404)  # fmt: skip
        with pytest.raises(ResourceMissing, match="analytics init") as info:
            notifier.publish([make_event(1)])
        stub.assert_no_pending_responses()
    assert info.value.kind == "SNS topic" and info.value.name == ARN
