"""The figure: round trips for a batch of 1,000 events from HTTP to DynamoDB.

One HTTP request over the real Falcon app, the StubBroker carrying what the worker gets,
the worker's actor storing into DynamoDB on a moto server, and every DynamoDB call
counted with botocore's ``before-call`` hook. The aggregate transactions are recorded by a
fake client (moto copies the whole table for every transaction item, which would make
1,000 events take minutes); the packing they show is the adapter's own.
"""

from __future__ import annotations

import json
import math
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from falcon import testing

from analytics.adapters.dynamodb_aggregates import TRANSACT_MAX, DynamoDBAggregateStore
from analytics.adapters.dynamodb_schema import ensure_resources
from analytics.bootstrap import bootstrap
from analytics.domain.clock import FixedClock
from analytics.entrypoints.actors import register_actors
from analytics.entrypoints.api.app import create_app
from tests.aws_support import CallCounter, aws_settings, dynamodb_stores, make_event

pytestmark = pytest.mark.integration


class RecordingAggregatesClient:
    """A stand-in DynamoDB client for the aggregate store: records transactions."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.sizes: list[int] = []

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:  # noqa: N803
        self.calls["BatchGetItem"] += 1
        return {"Responses": {}}

    def transact_write_items(self, TransactItems: list[Any]) -> dict[str, Any]:  # noqa: N803
        self.calls["TransactWriteItems"] += 1
        self.sizes.append(len(TransactItems))
        return {}


def test_a_batch_of_1000_events_takes_a_bounded_number_of_round_trips(
    moto_server: Any, aws_names: dict[str, str]
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    settings = aws_settings(
        moto_server, {k: v for k, v in aws_names.items() if "TOPIC" not in k},
        ANALYTICS_BROKER="stub", ANALYTICS_CACHE_BACKEND="none", ANALYTICS_AUTH="disabled",
        ANALYTICS_MAX_BATCH_EVENTS="1000", ANALYTICS_MAX_BODY_BYTES=str(4 * 1024 * 1024),
        ANALYTICS_CURSOR_SECRET="round-trips-cursor-secret",
    )  # fmt: skip
    ensure_resources(settings)
    fake = RecordingAggregatesClient()
    broker = StubBroker()
    container = bootstrap(settings, clock=FixedClock(now), broker=broker,
                          aggregates=DynamoDBAggregateStore(fake, settings.aggregates_table))  # fmt: skip
    register_actors(container)
    ddb = CallCounter(container.event_repo.client)
    types = ["page_view"] * 6 + ["click"] * 3 + ["purchase"]
    batch = [
        {"event_type": types[i % 10], "user_id": f"u{i % 150}", "session_id": f"s{i % 300}",
         "event_id": str(uuid.uuid4()),
         "timestamp": (now - timedelta(seconds=i)).isoformat(),
         **({"product_id": f"p{i % 40}", "price": "9.99", "currency": "EUR"}
            if types[i % 10] == "purchase" else {})}
        for i in range(1000)
    ]  # fmt: skip
    client = testing.TestClient(create_app(container))
    resp = client.simulate_post("/api/v1/analytics/events/batch", body=json.dumps({"events": batch}),
                                headers={"Content-Type": "application/json"})  # fmt: skip
    assert resp.status_code == 202 and resp.json["accepted"] == 1000, resp.text
    assert broker.queues["high_priority"].qsize() == 1  # one broker message for the batch
    worker = Worker(broker, worker_timeout=50)
    worker.start()
    try:
        broker.join("high_priority")
    finally:
        worker.stop()

    assert ddb.calls["BatchWriteItem"] == math.ceil(1000 / 25) == 40
    # "is it new?"; new events are counted from the message itself, not read back
    assert ddb.calls["BatchGetItem"] == math.ceil(1000 / 100)
    days = len({(now - timedelta(seconds=i)).date() for i in range(1000)})
    assert ddb.calls["PutItem"] <= days * (1 + 3)  # the day directory: days, type-days
    assert ddb.calls["Scan"] == 0 and ddb.calls["Query"] == 0
    assert fake.calls["BatchGetItem"] == math.ceil(1000 / 100)  # applied markers
    assert all(size <= TRANSACT_MAX for size in fake.sizes)
    transactions = fake.calls["TransactWriteItems"]
    assert transactions <= math.ceil(1000 / 4)  # >= 4 events per transaction
    total = 1 + 1 + sum(ddb.calls.values()) + sum(fake.calls.values())
    print(f"\n1000 events: {dict(ddb.calls)} + {dict(fake.calls)}; "
          f"events per transaction {1000 / transactions:.1f}; total round trips {total}")  # fmt: skip


class InFlight:
    """A client that counts how many Query calls overlap (each held 5 ms more, so that
    reads made together are seen to; reads made one after the other never overlap)."""

    def __init__(self, client: Any) -> None:
        import threading  # noqa: PLC0415

        self.client, self.now, self.most, self.calls = client, 0, 0, 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def query(self, **kwargs: Any) -> Any:
        import time  # noqa: PLC0415

        with self._lock:
            self.now += 1
            self.calls += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(0.005)
            return self.client.query(**kwargs)
        finally:
            with self._lock:
                self.now -= 1


def test_a_long_window_reads_its_partitions_in_parallel_with_the_same_result(
    moto_server: Any,
) -> None:
    from analytics.domain.aggregation import contribution  # noqa: PLC0415
    from analytics.domain.buckets import cover, epoch_minute  # noqa: PLC0415

    repo, store = dynamodb_stores(moto_server)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    events = [make_event(n, at=start + timedelta(days=n % 10, minutes=n)) for n in range(30)]
    repo.add_many(events)
    store.apply([contribution(e) for e in events])
    window = cover(epoch_minute(start), epoch_minute(start + timedelta(days=10)))

    counted = InFlight(store.client)
    store.client = counted
    store.read_parallelism = 1
    one_by_one = store.summarize([window], None)
    assert counted.most == 1
    calls, counted.calls = counted.calls, 0
    store.read_parallelism = 8
    together = store.summarize([window], None)
    assert together == one_by_one and together[0].count == 30 and together[0].unique_users == 7
    assert counted.calls == calls  # the same reads: 10 days x 4 shards, per grain
    assert 1 < counted.most <= 8
    store.read_parallelism = 1
    snap_one = store.snapshot(*_span(window))
    store.read_parallelism = 8
    assert store.snapshot(*_span(window)) == snap_one and len(snap_one.applied) == 30


def _span(window: Any) -> tuple[int, int]:
    return min(p.start for p in window), max(p.end for p in window)
