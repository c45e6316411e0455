"""The storage and SNS breakers against a moto server (DynamoDB, SNS over real HTTP) that
this test stops and starts again: closed -> open -> half-open -> closed."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from analytics.adapters.circuit_breaker import CircuitBreaker, State
from analytics.bootstrap import bootstrap
from analytics.domain.errors import AdapterError, CircuitOpen, StorageCircuitOpen
from tests.aws_support import aws_settings, make_event
from tests.support import free_port, wait_until

pytestmark = pytest.mark.integration


class Moto:
    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer  # noqa: PLC0415 - test-only dependency

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.region = "us-east-1"

    def env(self) -> dict[str, str]:
        return {"ANALYTICS_AWS_ENDPOINT_URL": self.endpoint_url, "ANALYTICS_AWS_REGION": self.region}


@pytest.fixture
def own_moto(moto_server: Any) -> Iterator[Moto]:  # moto_server: fake credentials in env
    moto = Moto()
    moto.server.start()
    yield moto
    moto.server.stop()


def transitions(breaker: CircuitBreaker) -> list[str]:
    seen: list[str] = []
    breaker.add_listener(lambda b, old, new: seen.append(f"{old}->{new}"))
    return seen


def test_storage_and_sns_breakers_on_a_stopped_moto_server(
    own_moto: Moto, aws_names: dict[str, str], data_dir: Any
) -> None:
    from analytics.adapters.dynamodb_schema import ensure_resources  # noqa: PLC0415

    settings = aws_settings(
        own_moto, aws_names,
        ANALYTICS_BROKER="stub", ANALYTICS_DATA_DIR=str(data_dir), ANALYTICS_AUTH="disabled",
        # A stopped server refuses connections at once: the timeouts only bound calls to
        # a live moto, which on a loaded machine took over a second (CI flake at 1 s).
        ANALYTICS_AWS_MAX_ATTEMPTS="1", ANALYTICS_AWS_CONNECT_TIMEOUT_S="2",
        ANALYTICS_AWS_READ_TIMEOUT_S="15", ANALYTICS_BREAKER_FAILURE_THRESHOLD="2",
        ANALYTICS_BREAKER_RESET_TIMEOUT_S="0.3",
    )  # fmt: skip
    ensure_resources(settings)
    c = bootstrap(settings)
    registry = c.extras["breakers"]
    storage, sns = registry.get("storage"), registry.get("sns")  # type: ignore[attr-defined]
    assert sns is not None, "the notifier is guarded"
    seen_storage, seen_sns = transitions(storage), transitions(sns)
    notifier = c.notifier  # type: ignore[attr-defined]
    assert c.event_repo.add_many([make_event(0)])
    notifier.publish([make_event(1)])

    own_moto.server.stop()
    with pytest.raises(AdapterError) as info:
        c.event_repo.add_many([make_event(2)])
    assert not isinstance(info.value, CircuitOpen)
    with pytest.raises(StorageCircuitOpen):  # the second failure in a row opens it
        c.event_repo.add_many([make_event(2)])
    failures = storage.failures
    with pytest.raises(StorageCircuitOpen):  # fails fast: DynamoDB is not called
        c.event_repo.add_many([make_event(3)])
    assert storage.failures == failures
    reads = registry.get("storage_reads")  # type: ignore[attr-defined]
    for _ in range(2):  # reads have their own breaker: they meet the outage themselves
        with pytest.raises(AdapterError):
            c.event_repo.get_many([make_event(3).event_id])
    assert reads.state is State.OPEN
    for _ in range(2):
        with pytest.raises(AdapterError):
            notifier.publish([make_event(4)])
    assert sns.state is State.OPEN
    with pytest.raises(CircuitOpen):
        notifier.publish([make_event(5)])

    own_moto.server.start()  # same port; moto keeps its tables in this process
    wait_until(lambda: storage.retry_after() == 0 and sns.retry_after() == 0, timeout=10,
               interval=0.02)  # fmt: skip
    event = make_event(6)
    assert c.event_repo.add_many([event]) == [event.event_id]
    notifier.publish([event])
    assert storage.state is State.CLOSED and sns.state is State.CLOSED
    assert seen_storage == ["closed->open", "open->half_open", "half_open->closed"]
    assert seen_sns == ["closed->open", "open->half_open", "half_open->closed"]
