"""Dead-letter use cases on the in-memory fake, and the PermanentError path on StubBroker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import dramatiq
import pytest

from analytics.adapters.dramatiq_queue import events_message
from analytics.adapters.memory import InMemoryDeadLetters
from analytics.application.dead_letters import (
    Selection,
    find_dead_letter,
    list_dead_letters,
    measure_dead_letters,
    purge_dead_letters,
    replay_dead_letters,
)
from analytics.bootstrap import bootstrap
from analytics.domain.errors import BadQuery, DeadLetterNotFound, StorageUnavailable
from analytics.domain.operations import DeadLetter
from analytics.entrypoints.actors import register_actors
from analytics.settings import Settings
from tests.ops_support import BreakableRepository, make_events

pytestmark = pytest.mark.unit
T = datetime(2026, 3, 1, tzinfo=UTC)


def letter(i: str, queue: str = "high_priority", actor: str = "process_events",
           error: str = "StorageUnavailable") -> DeadLetter:  # fmt: skip
    return DeadLetter(letter_id=i, queue=queue, actor=actor, failed_at=T + timedelta(seconds=len(i)),
                      attempts=11, error_type=error, error="down", permanent=False)  # fmt: skip


@pytest.fixture
def dlq() -> InMemoryDeadLetters:
    d = InMemoryDeadLetters()
    d.add(letter("aaaaaa-1"))
    d.add(letter("aaaaaa-2"))
    d.add(letter("bbbbbb-1", queue="maintenance", actor="purge_events_before"))
    d.add(letter("cccccc-1", error="PermanentError"))
    return d


def test_listing_counts_how_often_each_failure_happened(dlq: InMemoryDeadLetters) -> None:
    listing = list_dead_letters(dlq=dlq)
    assert len(listing.letters) == 4
    assert listing.groups[0] == ("high_priority", "process_events", "StorageUnavailable", 2)
    assert len(list_dead_letters(dlq=dlq, queue="maintenance").letters) == 1


def test_find_by_id_or_unique_prefix(dlq: InMemoryDeadLetters) -> None:
    assert find_dead_letter("bbbbbb", dlq=dlq).letter_id == "bbbbbb-1"
    with pytest.raises(BadQuery):
        find_dead_letter("aaaaaa", dlq=dlq)  # ambiguous
    with pytest.raises(DeadLetterNotFound):
        find_dead_letter("zzz", dlq=dlq)


def test_replay_one_a_filter_or_all(dlq: InMemoryDeadLetters) -> None:
    assert replay_dead_letters(Selection(ids=("aaaaaa-1",)), dlq=dlq) == ["aaaaaa-1"]
    assert replay_dead_letters(Selection(queue="maintenance"), dlq=dlq) == ["bbbbbb-1"]
    assert sorted(replay_dead_letters(Selection(all=True), dlq=dlq)) == ["aaaaaa-2", "cccccc-1"]
    assert dlq.list() == []
    assert [d.replays for d in dlq.replayed] == [1, 1, 1, 1]


def test_an_empty_selection_is_refused(dlq: InMemoryDeadLetters) -> None:
    with pytest.raises(BadQuery):
        purge_dead_letters(Selection(), dlq=dlq)
    with pytest.raises(DeadLetterNotFound):
        purge_dead_letters(Selection(ids=("nope-nope",)), dlq=dlq)
    for mixed in (Selection(ids=("aaaaaa-1",), queue="maintenance"),  # the CLI's too
                  Selection(ids=("aaaaaa-1",), all=True), Selection(all=True, actor="x")):  # fmt: skip
        with pytest.raises(BadQuery, match="without"):
            purge_dead_letters(mixed, dlq=dlq)
    assert len(dlq.list()) == 4


def test_depth_check_records_depths(dlq: InMemoryDeadLetters) -> None:
    depths = measure_dead_letters(dlq=dlq, now=T)
    assert depths["high_priority"] == 3 and depths["maintenance"] == 1
    assert depths["aggregations"] == 0
    assert dlq.recorded == (depths, T)


def _stub_system(**settings: object):  # type: ignore[no-untyped-def]
    repo = BreakableRepository()
    container = bootstrap(
        Settings(broker="stub", storage="memory", retry_min_backoff_ms=1, retry_max_backoff_ms=2,
                 **settings),  # type: ignore[arg-type]
        event_repo=repo,
    )  # fmt: skip
    register_actors(container)
    worker = dramatiq.Worker(container.broker, worker_timeout=20)
    worker.start()
    return container, repo, worker


def test_undecodable_payload_skips_retries_and_is_dead_lettered() -> None:
    container, _repo, worker = _stub_system()
    try:
        container.broker.enqueue(dramatiq.Message(
            queue_name="high_priority", actor_name="process_events", args=('[{"x":1}]',),
            kwargs={}, options={},
        ))  # fmt: skip
        container.broker.join("high_priority", fail_fast=False)
    finally:
        worker.stop()
    (dead,) = container.broker.dead_letters
    failure = dead.options["failure"]
    assert failure["error_type"] == "PermanentError" and failure["permanent"] is True
    assert failure["attempts"] == 1 and "retries" not in dead.options


def test_storage_failures_retry_then_dead_letter_with_the_reason() -> None:
    container, repo, worker = _stub_system(retry_max_retries=3)
    repo.broken = True
    try:
        container.broker.enqueue(events_message(make_events(3)))
        container.broker.join("high_priority", fail_fast=False)
    finally:
        worker.stop()
    (dead,) = container.broker.dead_letters
    assert repo.failures == 4  # one run + three retries, then no more
    assert dead.options["failure"]["error_type"] == StorageUnavailable.__name__
    assert dead.options["failure"]["attempts"] == 4 and not dead.options["failure"]["permanent"]


def test_recycler_never_signals_outside_the_dramatiq_cli() -> None:
    """Under pytest the parent is not a dramatiq master: count, but never send SIGHUP."""
    from analytics.adapters.recycler import WorkerRecycler, parent_is_dramatiq_master

    assert not parent_is_dramatiq_master()
    container, repo, worker = _stub_system()
    recycler = WorkerRecycler(2)
    container.broker.add_middleware(recycler)
    worker.stop()
    worker = dramatiq.Worker(container.broker, worker_timeout=20)
    worker.start()
    try:
        for _ in range(5):
            container.broker.enqueue(events_message(make_events(1)))
        container.broker.join("high_priority")
    finally:
        worker.stop()
    assert recycler.count == 5 and not recycler.signalled and not recycler.enabled
    assert repo.count() == 5


def test_an_orphaned_worker_never_signals_whoever_adopted_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its master gone, ``getppid()`` is init, a subreaper, or (pid reused) any process:
    the recycler sent it SIGHUP. It now signals only the master it booted under."""
    import os  # noqa: PLC0415

    from analytics.adapters import recycler as rec  # noqa: PLC0415

    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(rec.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    r = rec.WorkerRecycler(1)
    r.master, r.can_signal, r.enabled = 4242, True, True  # booted under pid 4242
    monkeypatch.setattr(rec.os, "getppid", lambda: 1)  # adopted by init since
    assert r.recycle("memory") is True and sent == []
    r2 = rec.WorkerRecycler(1)
    r2.master, r2.can_signal = os.getppid(), True  # still its parent: signalled
    monkeypatch.setattr(rec.os, "getppid", lambda: r2.master)
    assert r2.recycle("memory") is True and sent == [(r2.master, rec.signal.SIGHUP)]



class _CountingClient:
    """``<ns>:ops:workers`` as the recycler bumps it."""

    def __init__(self) -> None:
        self.fields: dict[str, int] = {}

    def hincrby(self, key: str, field: str, n: int) -> int:
        self.fields[field] = self.fields.get(field, 0) + n
        return self.fields[field]


def _recycler_under_a_master(
    monkeypatch: pytest.MonkeyPatch, max_tasks: int
) -> tuple[Any, list[tuple[int, int]], _CountingClient]:
    """A WorkerRecycler booted as under the dramatiq CLI (master pid 4242), SIGHUPs caught."""
    from analytics.adapters import recycler as rec  # noqa: PLC0415

    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(rec, "parent_is_dramatiq_master", lambda: True)
    monkeypatch.setattr(rec.os, "getppid", lambda: 4242)
    monkeypatch.setattr(rec.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    client = _CountingClient()
    r = rec.WorkerRecycler(max_tasks, client=client)
    threads = [SimpleNamespace(pause=lambda: None), SimpleNamespace(pause=lambda: None)]
    r.after_worker_boot(None, SimpleNamespace(workers=threads))  # type: ignore[arg-type]
    return r, sent, client


def test_a_worker_recycles_after_exactly_max_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation QA: ``ANALYTICS_WORKER_MAX_TASKS=3`` recycles after the third message, not
    the fourth (the documented N to N + threads - 1)."""
    import signal  # noqa: PLC0415

    r, sent, client = _recycler_under_a_master(monkeypatch, 3)
    r.after_process_message(None, None)  # type: ignore[arg-type]
    r.after_skip_message(None, None)  # type: ignore[arg-type]
    assert sent == []
    r.after_process_message(None, None)  # type: ignore[arg-type]
    assert sent == [(4242, signal.SIGHUP)] and client.fields == {"boots": 1, "recycles": 1}


def test_max_tasks_zero_never_recycles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation QA: 0 turns recycling after N tasks off (the default). Read as "after 0
    tasks", every worker process restarted after its first message, for ever."""
    r, sent, client = _recycler_under_a_master(monkeypatch, 0)
    for _ in range(5):
        r.after_process_message(None, None)  # type: ignore[arg-type]
    assert sent == [] and not r.signalled and client.fields == {"boots": 1}
    assert r.recycle("memory") is True  # other reasons still may recycle it


def test_a_process_is_recycled_once_whatever_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation QA: the memory limit, a dead thread and N tasks can all ask for a recycle;
    the first one does it. A second SIGHUP made the master reload all its workers again
    (every process's in-flight work interrupted twice) and counted two recycles for one."""
    import signal  # noqa: PLC0415

    r, sent, client = _recycler_under_a_master(monkeypatch, 0)
    assert r.recycle("memory") is True
    assert r.recycle("thread_died") is False
    assert sent == [(4242, signal.SIGHUP)]
    assert client.fields == {"boots": 1, "recycles": 1, "recycles_memory": 1}
    after_n, sent_n, _ = _recycler_under_a_master(monkeypatch, 1)
    after_n.after_process_message(None, None)  # type: ignore[arg-type]
    assert after_n.recycle("memory") is False and len(sent_n) == 1



def test_a_dead_lettered_message_is_one_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """dramatiq only says "Aborting message" at INFO: nothing a log alert would see."""
    import structlog  # noqa: PLC0415
    from dramatiq.brokers.stub import StubBroker  # noqa: PLC0415

    from analytics.adapters import dead_letter_recorder  # noqa: PLC0415

    captured = structlog.testing.CapturingLogger()
    monkeypatch.setattr(dead_letter_recorder, "log", captured)
    message = dramatiq.Message(queue_name="high_priority", actor_name="process_events",
                               args=(), kwargs={}, options={"retries": 3})  # fmt: skip
    proxy = dramatiq.MessageProxy(message)
    proxy.fail()
    recorder = dead_letter_recorder.DeadLetterRecorder()
    recorder.after_process_message(StubBroker(), proxy, exception=StorageUnavailable("down"))
    (call,) = captured.calls
    assert call.method_name == "error" and call.args == ("message dead-lettered",)
    assert call.kwargs["message_id"] == message.message_id
    assert (call.kwargs["error_type"], call.kwargs["attempts"]) == ("StorageUnavailable", 3)
    recorder.after_process_message(StubBroker(), dramatiq.MessageProxy(message), result=1)
    assert len(captured.calls) == 1  # a success logs nothing here


def test_a_failure_record_that_does_not_decode_leaves_the_letters_listed() -> None:
    """Review: one corrupt value in the Redis beside RabbitMQ made every listing a 500."""
    from analytics.adapters.dead_letter_recorder import FailureLog  # noqa: PLC0415

    class Values:  # a Redis with these values (fakes over mocks)
        def __init__(self, data: dict[str, bytes]) -> None:
            self.data = data

        def mget(self, keys: list[str]) -> list[bytes | None]:
            return [self.data.get(k) for k in keys]

    log = FailureLog(Values({"ns:ops:dlq:failure:a": b'{"error_type": "X"}',
                             "ns:ops:dlq:failure:b": b"\xff not json",
                             "ns:ops:dlq:failure:c": b"[1]"}), "ns", 60)  # fmt: skip
    assert log.read(["a", "b", "c", "d"]) == {"a": {"error_type": "X"}}


class _FailingRedis:
    """A Redis beside RabbitMQ that fails every call (fakes over mocks)."""

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise ConnectionError(f"redis down ({name})")

        return fail


class _RecordingRedis:
    def __init__(self) -> None:
        self.sets: list[tuple[str, bytes, int | None]] = []

    def set(self, key: str, value: bytes, ex: int | None = None) -> None:
        self.sets.append((key, value, ex))


def test_failure_records_expire_with_the_letter_and_a_redis_failure_costs_no_letter() -> None:
    """Mutation QA: the record's TTL and every swallowed Redis failure were untested (a
    record without a TTL is a slow leak; a raising Redis must not fail the worker's hook,
    the listing or a replay)."""
    from analytics.adapters.dead_letter_recorder import DeadLetterRecorder, FailureLog  # noqa: PLC0415

    redis = _RecordingRedis()
    FailureLog(redis, "ns", 604_800).record("m1", {"error_type": "X"})
    assert redis.sets == [("ns:ops:dlq:failure:m1", b'{"error_type":"X"}', 604_800)]
    down = FailureLog(_FailingRedis(), "ns", 60)
    assert down.read(["m1"]) == {}
    down.forget(["m1"])  # logged, not raised
    recorder = DeadLetterRecorder(down)
    from dramatiq.broker import MessageProxy  # noqa: PLC0415

    message = MessageProxy(dramatiq.Message(queue_name="high_priority", actor_name="process_events",
                                            args=(), kwargs={}, options={}))  # fmt: skip
    message.fail()
    broker = SimpleNamespace(actors={})
    recorder.after_process_message(broker, message, exception=RuntimeError("boom"))  # type: ignore[arg-type]
    assert message.options["failure"]["error_type"] == "RuntimeError"


@pytest.mark.parametrize("error", ["pika", "dramatiq"])
def test_rabbitmq_unreachable_is_queue_unavailable_for_every_dead_letter_call(error: str) -> None:
    """Mutation QA: the mapping to 503 (QueueUnavailable) of pika's errors and of
    dramatiq's BrokerConnectionError (a replay's enqueue) was untested."""
    from analytics.adapters.dead_letters import RabbitDeadLetters  # noqa: PLC0415
    from analytics.domain.errors import QueueUnavailable  # noqa: PLC0415

    def unreachable() -> Any:
        if error == "pika":
            import pika.exceptions  # noqa: PLC0415

            raise pika.exceptions.AMQPConnectionError("refused")
        raise dramatiq.errors.ConnectionClosed(OSError("gone"))

    dlq = RabbitDeadLetters(SimpleNamespace(new_channel=unreachable))
    for call in (dlq.depths, dlq.list, lambda: dlq.replay(["x"]), lambda: dlq.purge(["x"])):
        with pytest.raises(QueueUnavailable, match="RabbitMQ"):
            call()
