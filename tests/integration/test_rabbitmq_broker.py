"""RabbitMQ as the broker: publisher confirms on, group commit, declared queues, a worker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from dramatiq import Worker
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from analytics.adapters.dramatiq_queue import QUEUES, GroupCommitQueue
from analytics.adapters.memory import InMemoryEventRepository, InMemoryNotifier
from analytics.bootstrap import Container, bootstrap
from analytics.entrypoints.actors import register_actors
from analytics.settings import Settings
from tests.aws_support import make_event
from tests.support import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def container(rabbitmq_url: str) -> Iterator[Container]:
    settings = Settings(broker="rabbitmq", storage="memory", rabbitmq_url=rabbitmq_url,
                        sns_notify_event_types="purchase")  # fmt: skip
    c = bootstrap(settings, event_repo=InMemoryEventRepository(), notifier=InMemoryNotifier())
    register_actors(c)
    yield c
    c.broker.close()


def test_settings_choose_rabbitmq_with_delivery_confirmation(container: Container) -> None:
    broker = container.broker
    assert isinstance(broker, RabbitmqBroker)
    assert broker.confirm_delivery is True
    assert set(QUEUES) <= broker.get_declared_queues()


def test_group_commit_over_rabbitmq_stores_every_event_once(container: Container) -> None:
    queue = container.task_queue
    assert isinstance(queue, GroupCommitQueue)
    events = [make_event(n, event_type="purchase" if n % 10 == 0 else "page_view",
                         product_id="sku") for n in range(200)]  # fmt: skip
    task_ids: list[str] = []

    def send(chunk: list[Any]) -> None:
        task_ids.append(queue.enqueue_events(chunk))

    threads = [threading.Thread(target=send, args=(events[i : i + 10],))
               for i in range(0, 200, 10)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(task_ids) == 20  # every caller got a task id once its group was confirmed
    queue.enqueue_events(events[:50])  # a client retry: stored once
    worker = Worker(container.broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        repo = container.event_repo
        notifier = container.notifier
        assert isinstance(notifier, InMemoryNotifier)
        purchases = {e.event_id for e in events if e.event_type == "purchase"}
        wait_until(
            lambda: repo.count() == 200 and {e.event_id for e in notifier.published} == purchases,
            timeout=30,
            message="not every event stored and every purchase announced",
        )
    finally:
        worker.stop()
    assert repo.get_many(e.event_id for e in events) == {e.event_id: e for e in events}
    # Notifications are at least once: the client's retry, processed while the original
    # group was still being stored, may announce a purchase again (README, "SNS").
    assert {e.event_id for e in notifier.published} == purchases
