"""Messages a worker's fetch moved into its ack set but never delivered are requeued.

Seen in the redis-restart fault test: Redis ran and fsynced a fetch, died before its
reply, and redis-py retried the call on the restarted server; the first fetch's message
stayed in the live worker's ack set, never processed. Here the lost reply is a fetch
whose answer the test throws away.
"""

from __future__ import annotations

import threading
import uuid

import dramatiq
import pytest
import redis
from dramatiq import Worker

from analytics.adapters import dramatiq_queue
from analytics.adapters.dramatiq_queue import MsgspecJSONEncoder, StatusAckRedisBroker
from analytics.adapters.embedded_redis import RedisServerProcess
from tests.support import wait_until

pytestmark = pytest.mark.integration


def test_a_fetch_whose_reply_was_lost_is_requeued_and_in_flight_work_is_not(
    private_redis: RedisServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweeps: list[float] = []
    sweep = dramatiq_queue._StatusAckConsumer._sweep_orphans  # noqa: SLF001

    def counted(self: object) -> None:
        sweeps.append(1)
        sweep(self)  # type: ignore[arg-type]

    monkeypatch.setattr(dramatiq_queue._StatusAckConsumer, "_sweep_orphans", counted)  # noqa: SLF001
    dramatiq.set_encoder(MsgspecJSONEncoder())
    broker = StatusAckRedisBroker(
        client=redis.Redis(host="127.0.0.1", port=private_redis.port),
        namespace=f"orphans-{uuid.uuid4().hex[:8]}",
        heartbeat_timeout=60_000,  # the worker stays alive: its ack set is never reclaimed
    )
    broker.orphan_sweep_s = 0.2
    got: list[str] = []
    slow_started, release = threading.Event(), threading.Event()

    @dramatiq.actor(broker=broker, queue_name="orphans", max_retries=0)
    def record(name: str) -> None:
        if name == "slow":  # delivered and running through many sweeps: never requeued
            slow_started.set()
            release.wait(10)
        got.append(name)

    for name in ("lost-1", "lost-2"):
        record.send(name)
    fetched = broker.do_fetch("orphans", 2)  # the reply this worker "never received"
    assert len(fetched) == 2
    record.send("slow")
    record.send("fine")

    worker = Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        assert slow_started.wait(10)
        wait_until(lambda: {"lost-1", "lost-2", "fine"} <= set(got), timeout=15,
                   message="the orphaned messages were not requeued")  # fmt: skip
        seen = len(sweeps)  # five more sweeps while "slow" still runs: it stays put
        wait_until(lambda: len(sweeps) >= seen + 5, timeout=30, message="no five sweeps")
        release.set()
        wait_until(lambda: "slow" in got, timeout=10)
        broker.join("orphans", timeout=10_000)
    finally:
        release.set()
        worker.stop()
    assert sorted(got) == ["fine", "lost-1", "lost-2", "slow"]  # each exactly once
