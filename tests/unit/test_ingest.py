"""Ingest use cases on fakes: receipts, batches partly accepted, duplicates in a batch."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from analytics.adapters.memory import InMemoryTaskQueue
from analytics.application.ingest import BatchTooLarge, IngestDeps, accept_batch, accept_event
from analytics.domain.clock import FixedClock
from analytics.domain.errors import MalformedInput, ValidationFailed

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
GOOD = {"event_type": "page_view", "user_id": "u1", "session_id": "s1"}


@pytest.fixture
def queue() -> InMemoryTaskQueue:
    return InMemoryTaskQueue()


@pytest.fixture
def deps(queue: InMemoryTaskQueue) -> IngestDeps:
    return IngestDeps(queue=queue, clock=FixedClock(NOW), new_id=uuid.uuid4)


def test_single_event_is_queued_and_receipted(deps: IngestDeps, queue: InMemoryTaskQueue) -> None:
    r = accept_event(json.dumps(GOOD).encode(), correlation_id="cid", deps=deps)
    assert r.status == "accepted" and r.correlation_id == "cid"
    assert r.background_task_id == queue.batches[0][0]
    assert queue.events[0].event_id == r.event_id
    assert r.computed_fields.event_day == "2026-11-27"


def test_invalid_event_is_not_queued(deps: IngestDeps, queue: InMemoryTaskQueue) -> None:
    with pytest.raises(ValidationFailed):
        accept_event(b'{"event_type": "x"}', correlation_id="c", deps=deps)
    assert queue.batches == []


@pytest.mark.parametrize("first", [b"5", b'"bad id"'])
def test_a_member_given_twice_counts_as_its_last_value_in_a_batch_and_alone(
    deps: IngestDeps, queue: InMemoryTaskQueue, first: bytes
) -> None:
    """Bad value first, good value last: the single route answered 422 with no errors and
    a batch rejected the event with none, or accepted it, depending on the rule (fuzz QA)."""
    event = b'{"event_type":"page_view","user_id":' + first + b',"user_id":"u","session_id":"s"}'
    alone = accept_event(event, correlation_id="c", deps=deps)
    batch = accept_batch(b'{"events":[' + event + b"]}", correlation_id="c", deps=deps,
                         max_events=10)  # fmt: skip
    assert alone.status == "accepted" and batch.accepted == 1, batch
    assert [e.user_id for e in queue.events] == ["u", "u"]


def test_batch_is_partly_accepted(deps: IngestDeps, queue: InMemoryTaskQueue) -> None:
    dup = str(uuid.uuid4())
    body = {
        "events": [
            {**GOOD, "event_id": dup},
            {"event_type": "purchase", "user_id": "u1", "session_id": "s1"},
            {**GOOD, "event_id": dup},
            "not an object",
            {**GOOD},
        ]
    }
    r = accept_batch(json.dumps(body).encode(), correlation_id="c", deps=deps, max_events=10)
    assert [x.status for x in r.results] == [
        "accepted", "rejected", "duplicate", "rejected", "accepted",
    ]  # fmt: skip
    assert (r.accepted, r.duplicates, r.rejected) == (2, 1, 2)
    assert r.results[1].errors[0]["field"] == "product_id"
    assert len(queue.batches) == 1 and len(queue.events) == 2  # one message for the batch


def test_batch_limits(deps: IngestDeps) -> None:
    body = json.dumps({"events": [GOOD] * 11}).encode()
    with pytest.raises(BatchTooLarge):
        accept_batch(body, correlation_id="c", deps=deps, max_events=10)
    with pytest.raises(ValidationFailed):
        accept_batch(b'{"events": []}', correlation_id="c", deps=deps, max_events=10)
    with pytest.raises(ValidationFailed):
        accept_batch(b'{"evts": []}', correlation_id="c", deps=deps, max_events=10)
    with pytest.raises(MalformedInput):
        accept_batch(b"{", correlation_id="c", deps=deps, max_events=10)


def test_batch_with_nothing_valid_queues_nothing(deps: IngestDeps, queue: InMemoryTaskQueue) -> None:
    r = accept_batch(b'{"events": [{}]}', correlation_id="c", deps=deps, max_events=10)
    assert r.accepted == 0 and r.background_task_id is None and queue.batches == []
