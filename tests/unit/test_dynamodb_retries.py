"""Paths moto never takes (UnprocessedItems, throttling), driven by botocore's Stubber."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
from botocore.stub import ANY, Stubber

from analytics.adapters.aws import botocore_config
from analytics.adapters.dynamodb_events import Backoff, DynamoDBEventRepository, event_item
from analytics.domain.clock import FixedClock
from analytics.domain.errors import StorageUnavailable
from analytics.settings import Settings
from tests.aws_support import make_event, stubbed_dynamodb_client

pytestmark = pytest.mark.unit
TABLE = "events-stubbed"


@pytest.fixture
def client() -> Any:
    return stubbed_dynamodb_client()


def _repo(client: Any, sleeps: list[float], max_attempts: int = 8) -> DynamoDBEventRepository:
    backoff = Backoff(base_s=0.05, cap_s=0.4, max_attempts=max_attempts,
                      sleep=sleeps.append, rng=random.Random(7))  # fmt: skip
    clock = FixedClock(make_event(0).timestamp + timedelta(minutes=1))
    return DynamoDBEventRepository(client, TABLE, clock=clock, shards=4, backoff=backoff)


def _puts(events: list[Any]) -> list[dict[str, Any]]:
    return [
        {"PutRequest": {"Item": event_item(e, shards=4, retention=timedelta(days=395))}}
        for e in events
    ]


def _nothing_stored(stub: Stubber, n: int) -> None:
    stub.add_response("batch_get_item", {"Responses": {TABLE: []}}, {"RequestItems": ANY})


def test_unprocessed_items_are_retried_with_capped_jittered_backoff(client: Any) -> None:
    events = [make_event(n) for n in range(30)]  # two chunks: 25 + 5
    puts = _puts(events)
    sleeps: list[float] = []
    repo = _repo(client, sleeps)
    with Stubber(client) as stub:
        _nothing_stored(stub, 30)
        # chunk 1: 25 sent, 10 come back unprocessed, then 3, then done
        stub.add_response("batch_write_item", {"UnprocessedItems": {TABLE: puts[15:25]}},
                          {"RequestItems": {TABLE: puts[:25]}})  # fmt: skip
        stub.add_response("batch_write_item", {"UnprocessedItems": {TABLE: puts[22:25]}},
                          {"RequestItems": {TABLE: puts[15:25]}})  # fmt: skip
        for _ in range(4):  # throttled hard: the same 3 come back four more times
            stub.add_response("batch_write_item", {"UnprocessedItems": {TABLE: puts[22:25]}},
                              {"RequestItems": {TABLE: puts[22:25]}})  # fmt: skip
        stub.add_response("batch_write_item", {"UnprocessedItems": {}},
                          {"RequestItems": {TABLE: puts[22:25]}})  # fmt: skip
        # chunk 2: all 5 in one go
        stub.add_response("batch_write_item", {}, {"RequestItems": {TABLE: puts[25:]}})
        assert repo.add_many(events) == [e.event_id for e in events]
        stub.assert_no_pending_responses()
    assert len(sleeps) == 6  # one sleep before each re-send
    caps = [min(0.4, 0.05 * 2**attempt) for attempt in range(1, 7)]
    assert all(0 <= s <= cap for s, cap in zip(sleeps, caps, strict=True))
    assert max(sleeps) <= 0.4  # capped
    assert len(set(sleeps)) == len(sleeps)  # jittered, not a fixed schedule


def test_items_left_unprocessed_after_the_last_try_raise_instead_of_being_dropped(
    client: Any,
) -> None:
    events = [make_event(n) for n in range(3)]
    puts = _puts(events)
    sleeps: list[float] = []
    repo = _repo(client, sleeps, max_attempts=3)
    with Stubber(client) as stub:
        _nothing_stored(stub, 3)
        stub.add_response("batch_write_item", {"UnprocessedItems": {TABLE: puts}})
        stub.add_response("batch_write_item", {"UnprocessedItems": {TABLE: puts[1:]}})
        stub.add_response("batch_write_item", {"UnprocessedItems": {TABLE: puts[2:]}})
        with pytest.raises(StorageUnavailable, match="1 items still unprocessed"):
            repo.add_many(events)
        stub.assert_no_pending_responses()
    assert len(sleeps) == 2


@pytest.mark.parametrize(
    "code", ["ProvisionedThroughputExceededException", "ThrottlingException",
             "ServiceUnavailable", "InternalServerError"],
)  # fmt: skip
def test_throttling_and_unavailable_errors_surface_as_retryable(client: Any, code: str) -> None:
    repo = _repo(client, [])
    with Stubber(client) as stub:
        _nothing_stored(stub, 1)
        stub.add_client_error("batch_write_item", service_error_code=code, http_status_code=400)
        with pytest.raises(StorageUnavailable, match=code):
            repo.add_many([make_event(1)])


def test_unprocessed_keys_of_batch_get_are_retried(client: Any) -> None:
    events = [make_event(n) for n in range(2)]
    sleeps: list[float] = []
    repo = _repo(client, sleeps)
    stored = event_item(events[0], shards=4, retention=timedelta(days=395))
    key1 = {"event_id": {"S": str(events[1].event_id)}}
    with Stubber(client) as stub:
        stub.add_response(
            "batch_get_item",
            {"Responses": {TABLE: [stored]},
             "UnprocessedKeys": {TABLE: {"Keys": [key1], "ConsistentRead": True}}},
        )  # fmt: skip
        stub.add_response("batch_get_item", {"Responses": {TABLE: []}})
        assert repo.get_many([e.event_id for e in events]) == {events[0].event_id: events[0]}
    assert len(sleeps) == 1


def test_botocore_config_has_retries_and_timeouts() -> None:
    cfg = botocore_config(Settings(aws_max_attempts=12, aws_connect_timeout_s=2,
                                   aws_read_timeout_s=7))  # fmt: skip
    assert cfg.retries == {"mode": "adaptive", "total_max_attempts": 12}
    assert cfg.connect_timeout == 2 and cfg.read_timeout == 7


def test_throttled_storage_is_retried_then_dead_lettered_never_dropped(client: Any) -> None:
    from dramatiq import Worker  # noqa: PLC0415
    from dramatiq.brokers.stub import StubBroker  # noqa: PLC0415

    from analytics.adapters import codec  # noqa: PLC0415
    from analytics.bootstrap import bootstrap  # noqa: PLC0415
    from analytics.entrypoints.actors import register_actors  # noqa: PLC0415

    settings = Settings(broker="stub", storage="memory", cache_backend="none", auth="disabled")
    broker = StubBroker()
    container = bootstrap(settings, broker=broker, event_repo=_repo(client, []))
    actors = register_actors(container)
    actors["process_events"].options.update(max_retries=2, min_backoff=10, max_backoff=20)
    events = [make_event(n) for n in range(3)]
    with Stubber(client) as stub:
        for _ in range(3):  # the first try and two retries, all throttled
            stub.add_client_error("batch_get_item", http_status_code=400,
                                  service_error_code="ProvisionedThroughputExceededException")  # fmt: skip
        worker = Worker(broker, worker_timeout=20)
        worker.start()
        try:
            message = actors["process_events"].send(codec.encode(events).decode())
            broker.join("high_priority", fail_fast=False)
        finally:
            worker.stop()
        stub.assert_no_pending_responses()
    dead = broker.dead_letters_by_queue["high_priority"]
    assert [m.message_id for m in dead] == [message.message_id]  # kept for replay
    assert codec.events_from_arg(dead[0].args[0]) == events


def test_botocore_retries_a_transaction_with_one_idempotency_token() -> None:
    """The reconcile's corrections carry no marker: a try whose answer was lost after
    DynamoDB committed must not apply them twice. botocore fills ``ClientRequestToken``
    (an idempotency token in the API model) once per call and sends it on every try."""
    import json  # noqa: PLC0415

    import boto3  # noqa: PLC0415
    from botocore.awsrequest import AWSResponse  # noqa: PLC0415

    from analytics.adapters.dynamodb_aggregates import DynamoDBAggregateStore  # noqa: PLC0415
    from analytics.domain.aggregation import CounterKey  # noqa: PLC0415

    settings = Settings(aws_max_attempts=3, aws_retry_mode="standard")
    client = boto3.session.Session().client(
        "dynamodb", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x",
        endpoint_url="http://127.0.0.1:9", config=botocore_config(settings),
    )  # fmt: skip
    tokens: list[str] = []

    def answer(request: Any, **_: Any) -> AWSResponse:
        tokens.append(json.loads(request.body)["ClientRequestToken"])
        if len(tokens) == 1:  # the commit happened, its answer did not arrive intact
            return AWSResponse(request.url, 500, {}, _Raw(b'{"__type": "InternalServerError"}'))
        return AWSResponse(request.url, 200, {}, _Raw(b"{}"))

    client.meta.events.register("before-send.dynamodb.TransactWriteItems", answer)
    DynamoDBAggregateStore(client, "aggregates").correct({CounterKey("events", 1, 60, "click"): 2})
    assert len(tokens) == 2 and tokens[0] and tokens[0] == tokens[1]


class _Raw:
    """The raw body botocore reads from an ``AWSResponse``."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Any:
        yield self.data
