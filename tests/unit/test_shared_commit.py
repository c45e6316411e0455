"""Worker-side group commit: threads share store calls; results and errors reach each."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from analytics.adapters.memory import InMemoryEventRepository
from analytics.application.store_events import SharedCommit, StoreResult, store_events
from analytics.domain.errors import StorageUnavailable
from analytics.domain.events import Event
from tests.integration.test_background_processing import make_event


def test_threads_share_store_calls_and_each_gets_its_share() -> None:
    repo = InMemoryEventRepository()
    calls: list[int] = []

    def slow_store(events: Sequence[Event]) -> StoreResult:
        calls.append(len(events))
        time.sleep(0.01)  # a commit: others queue up meanwhile
        return store_events(events, repo=repo)

    shared = SharedCommit(slow_store)
    groups = [[make_event(g * 10 + i) for i in range(5)] for g in range(16)]
    groups.append(groups[0][:2])  # a redelivered part: nothing new in it
    results: dict[int, StoreResult] = {}
    start = threading.Barrier(len(groups))

    def submit(n: int) -> None:
        start.wait()
        results[n] = shared.submit(groups[n])

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(len(groups))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert repo.count() == 80
    assert len(calls) < len(groups)  # shared, not one call per message
    assert sum(r.stored for r in results.values()) == 80  # each new event credited once
    assert all(r.received == len(groups[n]) for n, r in results.items())


def test_a_failed_store_fails_every_message_of_the_round() -> None:
    gate = threading.Event()

    def failing(events: Sequence[Event]) -> StoreResult:
        gate.wait(5)
        raise StorageUnavailable("disk gone")

    shared = SharedCommit(failing)
    errors: list[BaseException] = []

    def submit(i: int) -> None:
        try:
            shared.submit([make_event(i)])
        except StorageUnavailable as exc:
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    gate.set()
    for t in threads:
        t.join(10)
    assert len(errors) == 6  # nobody is told "stored" when the commit failed


def test_a_lone_submit_stores_at_once() -> None:
    repo = InMemoryEventRepository()
    shared = SharedCommit(lambda evs: store_events(evs, repo=repo))
    event = make_event(1)
    assert shared.submit([event]).stored == 1
    assert shared.submit([event]).duplicates == 1
    with pytest.raises(ZeroDivisionError):
        SharedCommit(lambda evs: 1 // 0).submit([make_event(2)])  # type: ignore[arg-type,return-value]
