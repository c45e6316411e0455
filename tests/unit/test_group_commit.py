"""GroupCommitQueue's leader/follower relay, with a send of our own (no broker).

What must hold whatever the interleaving: every caller gets the id of a message that
carries its events (or an error, and then its events were not sent), nothing is sent twice,
and the relay never stalls: after a slow send, a failed send or a caller giving up, the
next callers are served.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import dramatiq
import pytest

from analytics.adapters import codec
from analytics.adapters.dramatiq_queue import GroupCommitQueue, _group_message, events_message
from analytics.domain.errors import QueueUnavailable
from analytics.domain.events import Event
from tests import aggsupport

NOW = datetime.now(UTC)


def make_event(i: int) -> Event:
    return aggsupport.make_event(NOW, user=f"u{i}", session=f"s{i}")


class Recorder:
    """A send that keeps every message it accepted; ``behaviour`` may sleep or raise."""

    def __init__(self, behaviour: Callable[[int], None] = lambda n: None) -> None:
        self.sent: dict[str, list[str]] = {}
        self.behaviour = behaviour
        self.lock = threading.Lock()
        self.calls = 0

    def __call__(self, message: dramatiq.Message[Any]) -> dramatiq.Message[Any]:
        with self.lock:
            self.calls += 1
            n = self.calls
        self.behaviour(n)
        ids = [str(e.event_id) for e in codec.events_from_arg(message.args[0])]
        with self.lock:
            self.sent[message.message_id] = ids
        return message


def queue(send: Recorder, **kw: Any) -> GroupCommitQueue:
    return GroupCommitQueue(None, send=send, **kw)  # type: ignore[arg-type]


def run_callers(q: GroupCommitQueue, n: int, per: int = 1) -> list[tuple[list[Event], object]]:
    out: list[tuple[list[Event], object]] = []
    lock = threading.Lock()
    start = threading.Barrier(n)

    def call(i: int) -> None:
        events = [make_event(i * per + k) for k in range(per)]
        start.wait()
        try:
            result: object = q.enqueue_events(events)
        except QueueUnavailable as exc:
            result = exc
        with lock:
            out.append((events, result))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "the relay stalled"
    return out


def test_every_caller_gets_the_message_that_carries_its_events() -> None:
    send = Recorder(lambda n: time.sleep(random.uniform(0, 0.003)))  # noqa: S311
    q = queue(send)
    results = []
    for _ in range(5):  # several waves, so the lead is passed on many times
        results += run_callers(q, 32, per=2)
    for events, task_id in results:
        assert isinstance(task_id, str)
        assert {str(e.event_id) for e in events} <= set(send.sent[task_id])
    all_sent = [i for ids in send.sent.values() for i in ids]
    assert len(all_sent) == len(set(all_sent)) == 32 * 5 * 2  # each event sent exactly once
    assert len(send.sent) < 32 * 5  # and callers did share messages


def test_a_failed_send_fails_its_group_only_and_the_relay_goes_on() -> None:
    def fail_first(n: int) -> None:
        if n == 1:
            time.sleep(0.05)  # let the others pile up behind the first send
            raise ConnectionError("redis is down")

    send = Recorder(fail_first)
    q = queue(send)
    results = run_callers(q, 16)
    failed = [ev for ev, r in results if isinstance(r, QueueUnavailable)]
    ok = [(ev, r) for ev, r in results if isinstance(r, str)]
    assert failed and ok  # the first group failed, the callers behind it were served
    sent = {i for ids in send.sent.values() for i in ids}
    assert not sent & {str(e.event_id) for ev in failed for e in ev}
    assert {str(e.event_id) for ev, _ in ok for e in ev} <= sent
    assert isinstance(q.enqueue_events([make_event(99)]), str)


def test_a_caller_that_gives_up_leaves_nothing_behind_and_the_relay_goes_on() -> None:
    release, inside = threading.Event(), threading.Event()

    def stuck_first(n: int) -> None:
        if n == 1:
            inside.set()
            release.wait(10)

    send = Recorder(stuck_first)
    q = queue(send, timeout_s=0.2)
    leader = threading.Thread(target=q.enqueue_events, args=([make_event(0)],))
    leader.start()
    assert inside.wait(10)  # the leader is inside its (stuck) send, whatever the load
    with pytest.raises(QueueUnavailable, match="did not confirm in time"):
        q.enqueue_events([make_event(1)])  # waited behind it, then gave up: never sent
    release.set()
    leader.join(10)
    assert isinstance(q.enqueue_events([make_event(2)]), str)
    sent = [i for ids in send.sent.values() for i in ids]
    assert len(sent) == 2  # events 0 and 2; event 1 was refused, so not sent


def test_an_aborted_leader_passes_the_lead_on() -> None:
    def abort_first(n: int) -> None:
        if n == 1:
            time.sleep(0.05)
            raise KeyboardInterrupt  # not an Exception: the worker is going away

    q = queue(Recorder(abort_first))
    errors: list[BaseException] = []

    def first() -> None:
        try:
            q.enqueue_events([make_event(0)])
        except KeyboardInterrupt as exc:
            errors.append(exc)

    t = threading.Thread(target=first)
    t.start()
    time.sleep(0.01)
    results = run_callers(q, 8)  # queued behind the aborting leader
    t.join(10)
    assert errors
    assert all(isinstance(r, str) for _, r in results)


@pytest.mark.parametrize("sizes", [[0], [1], [3], [0, 2, 0, 1], [2, 2, 2]])
def test_the_group_message_holds_every_callers_events_in_order(sizes: list[int]) -> None:
    """Each caller encodes its own events; the leader joins the arrays into one."""
    groups = [[make_event(i * 10 + k) for k in range(n)] for i, n in enumerate(sizes)]
    ids = [{e.correlation_id for e in g} for g in groups]
    joined = _group_message([codec.encode_rows(g) for g in groups], ids)
    everything = [e for g in groups for e in g]
    assert codec.events_from_arg(joined.args[0]) == everything
    assert bytes(joined.args[0]) == bytes(events_message(everything).args[0])
    assert joined.options == events_message(everything).options
