"""Dead letters on the RabbitMQ broker's ``<queue>.XQ`` queues: list, replay, purge.

Needs the RabbitMQ server on 127.0.0.1:5672 and ``rabbitmqctl`` (a private vhost per
module: queue names are fixed); skips otherwise.
"""

from __future__ import annotations

from typing import Any

import dramatiq
import pytest
from dramatiq import Worker

from analytics.adapters.dramatiq_queue import events_message
from analytics.application.dead_letters import Selection, purge_dead_letters, replay_dead_letters
from analytics.bootstrap import bootstrap
from analytics.entrypoints.actors import register_actors
from analytics.entrypoints.telemetry import TaskMetrics
from analytics.settings import Settings
from tests.ops_support import BreakableRepository, make_events
from tests.support import wait_until

ACTORS = ("process_events", "(undecodable)")


def sample(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY  # noqa: PLC0415

    return REGISTRY.get_sample_value(name, labels) or 0.0

pytestmark = pytest.mark.integration


def test_rabbitmq_dead_letters_list_replay_purge(
    rabbitmq_url: str, redis_server: Any, namespace: str
) -> None:
    # The task-status records live in Redis: the test's own (it wrote them to
    # 127.0.0.1:6379 under the default namespace, another deployment's Redis there).
    settings = Settings(
        broker="rabbitmq", rabbitmq_url=rabbitmq_url, storage="memory",
        cache_backend="none", retry_max_retries=1, retry_min_backoff_ms=10,
        retry_max_backoff_ms=20, redis_host=redis_server.host, redis_port=redis_server.port,
        redis_db=redis_server.db, namespace=namespace,
    )  # fmt: skip
    repo = BreakableRepository()
    container = bootstrap(settings, event_repo=repo)
    register_actors(container)
    broker, dlq = container.broker, container.dead_letters
    broker.add_middleware(TaskMetrics(settings))  # the dead-letter counter
    dead = {actor: sample("analytics_tasks_dead_lettered_total", actor=actor,
                          queue="high_priority") or 0 for actor in ACTORS}  # fmt: skip
    assert type(dlq).__name__ == "RabbitDeadLetters"
    worker = Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        repo.broken = True
        groups = [make_events(4, user="a"), make_events(3, user="b")]
        sent = [broker.enqueue(events_message(g)).message_id for g in groups]
        bad = broker.enqueue(dramatiq.Message(
            queue_name="high_priority", actor_name="process_events", args=("{nope",),
            kwargs={}, options={},
        )).message_id  # fmt: skip
        wait_until(lambda: dlq.depths()["high_priority"] == 3, timeout=30)
        letters = {d.letter_id: d for d in dlq.list(queue="high_priority")}
        assert set(letters) == {*sent, bad}
        assert {letters[i].error_type for i in sent} == {"StorageUnavailable"}
        assert all(letters[i].attempts == 2 and not letters[i].permanent for i in sent)
        # RabbitMQ keeps the message as delivered: the reason of a failure that was never
        # retried came from nowhere ("unknown", not permanent: QA); now from the Redis
        # beside it, where the worker records it.
        assert letters[bad].error_type == "PermanentError" and letters[bad].permanent
        assert "does not decode" in letters[bad].error and letters[bad].attempts == 1
        assert "PermanentError" in letters[bad].traceback
        # Listing put everything back (RabbitMQ requeues on channel close, asynchronously).
        wait_until(lambda: dlq.depths()["high_priority"] == 3, timeout=10)
        assert {d.letter_id for d in dlq.list()} == {*sent, bad}

        repo.broken = False
        assert set(dlq.failures.read(sent)) == set(sent)  # type: ignore[attr-defined]
        assert sorted(replay_dead_letters(Selection(ids=tuple(sent)), dlq=dlq)) == sorted(sent)
        # A replayed copy keeps its id: its next death must not show this one's reason.
        assert dlq.failures.read(sent) == {}  # type: ignore[attr-defined]
        wait_until(lambda: repo.count() == 7, timeout=30, message="replayed events not stored")
        assert [d.letter_id for d in dlq.list()] == [bad]
        assert purge_dead_letters(Selection(all=True), dlq=dlq) == [bad]
        assert dlq.depths()["high_priority"] == 0
        assert repo.count() == 7

        # Bytes another producer published: one such letter made every list, replay and
        # purge raise DecodeError (CLI traceback, HTTP 500), the real letters stuck (QA).
        import pika  # noqa: PLC0415

        conn = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
        conn.channel().basic_publish("", "high_priority", b"not json at all",
                                     pika.BasicProperties(delivery_mode=2, message_id="rpoison01"))  # fmt: skip
        conn.close()
        wait_until(lambda: dlq.depths()["high_priority"] == 1, timeout=30)
        # Counted like any dead letter (dramatiq's consumer nacked it without the hooks).
        assert [sample("analytics_tasks_dead_lettered_total", actor=actor,
                       queue="high_priority") - dead[actor] for actor in ACTORS] == [3, 1]  # fmt: skip
        (poison,) = dlq.list()
        assert (poison.letter_id, poison.actor, poison.error_type) == (
            "rpoison01", "(undecodable)", "DecodeError")  # fmt: skip
        assert replay_dead_letters(Selection(ids=("rpoison01",)), dlq=dlq) == []
        wait_until(lambda: dlq.depths()["high_priority"] == 1, timeout=10)  # still there
        assert purge_dead_letters(Selection(ids=("rpoison01",)), dlq=dlq) == ["rpoison01"]
        assert dlq.depths()["high_priority"] == 0
    finally:
        worker.stop()
        broker.close()


def test_a_replay_sends_each_letter_once_and_survives_a_closed_connection(
    rabbitmq_url: str, redis_server: Any, namespace: str
) -> None:
    """QA, on a live RabbitMQ: (1) a replayed copy that failed again at once was
    dead-lettered behind the letters still being read, met again and sent again: one
    replay of one letter answered "replayed 15"; (2) once RabbitMQ closed the thread's
    connection, every dead-letter call failed until that thread happened to enqueue."""
    settings = Settings(
        broker="rabbitmq", rabbitmq_url=rabbitmq_url, storage="memory", cache_backend="none",
        retry_max_retries=0, redis_host=redis_server.host, redis_port=redis_server.port,
        redis_db=redis_server.db, namespace=namespace,
    )  # fmt: skip
    container = bootstrap(settings, event_repo=BreakableRepository())
    register_actors(container)
    broker, dlq = container.broker, container.dead_letters
    worker = Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        def undecodable() -> str:  # fails for good at once: back in .XQ within milliseconds
            return broker.enqueue(dramatiq.Message(
                queue_name="high_priority", actor_name="process_events", args=("{nope",),
                kwargs={}, options={},
            )).message_id  # fmt: skip

        first = undecodable()
        wait_until(lambda: dlq.depths()["high_priority"] == 1, timeout=30)
        others = [undecodable() for _ in range(40)]  # read after it, one round trip each
        wait_until(lambda: dlq.depths()["high_priority"] == 41, timeout=30)
        assert replay_dead_letters(Selection(ids=(first,)), dlq=dlq) == [first]
        # The copy failed again: 41 letters, the replayed one among them once.
        wait_until(lambda: dlq.depths()["high_priority"] == 41, timeout=30)
        assert sorted(d.letter_id for d in dlq.list()) == sorted([first, *others])

        broker.connection.close()  # as RabbitMQ closing this thread's connection
        assert len(dlq.list(queue="high_priority")) == 41
        assert dlq.depths()["high_priority"] == 41
        assert len(purge_dead_letters(Selection(all=True), dlq=dlq)) == 41
    finally:
        worker.stop()
        broker.close()


def test_a_vhost_where_no_dead_letter_queue_exists_yet_has_no_letters(
    rabbitmq_url: str, redis_server: Any, namespace: str
) -> None:
    """Review: on a new vhost the ``.XQ`` queues exist only once a worker declared them;
    RabbitMQ's 404 for the passive declare made every dead-letter read a 503."""
    from tests.conftest import _rabbitmqctl  # noqa: PLC0415

    vhost = f"t-fresh-{namespace[-8:]}"
    assert _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        url = rabbitmq_url.rsplit("/", 1)[0] + "/" + vhost
        settings = Settings(broker="rabbitmq", rabbitmq_url=url, storage="memory",
                            cache_backend="none", redis_host=redis_server.host,
                            redis_port=redis_server.port, redis_db=redis_server.db,
                            namespace=namespace)  # fmt: skip
        from analytics.adapters.dramatiq_queue import build_broker  # noqa: PLC0415
        from analytics.bootstrap import build_dead_letters, failure_log  # noqa: PLC0415

        broker = build_broker(settings)
        try:
            dlq = build_dead_letters(broker, failure_log(settings, broker))
            assert set(dlq.depths().values()) == {0}
            assert dlq.list() == [] and dlq.purge(["x"]) == [] and dlq.replay(["x"]) == []
        finally:
            broker.close()
    finally:
        _rabbitmqctl("delete_vhost", vhost)
