"""Two real ``analytics scheduler`` processes: one active, takeover on SIGKILL, no period twice.

Short settings: a 1.5 s lease and a 1 s "hourly" period. The jobs' messages land on the
Redis broker's queues (no worker runs), so the test reads exactly what was enqueued.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import redis

from tests.support import analytics_cmd, child_env, wait_until

pytestmark = pytest.mark.e2e
LEASE_S = 1.5


def _hourly_starts(client: redis.Redis, ns: str) -> list[str]:
    starts = []
    for raw in client.hvals(f"{ns}:aggregations.msgs"):
        msg = json.loads(raw)
        if msg["actor_name"] == "generate_aggregations" and msg["kwargs"]["period"] == "hour":
            starts.append(msg["kwargs"]["start"])
    return sorted(starts)


def _holder(client: redis.Redis, ns: str) -> str | None:
    value = client.get(f"{ns}:scheduler:leader")
    return value.decode() if value else None


@pytest.fixture
def schedulers(redis_server: Any, namespace: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    env = child_env(
        **redis_server.env(namespace),
        ANALYTICS_SCHEDULER_LEASE_S=str(LEASE_S),
        ANALYTICS_SCHEDULE_HOURLY_S="1",
        ANALYTICS_SCHEDULE_DELAY_S="0",
        ANALYTICS_SCHEDULE_DLQ_CHECK_S="1",
        ANALYTICS_LOG_FORMAT="console",
    )
    # What the workers' ActorRegistry records at boot: the scheduler enqueues only these.
    redis_server.client().sadd(
        f"{namespace}:ops:actors",
        "generate_aggregations", "purge_events_before", "check_dead_letters",
        "warm_dashboard_cache",
    )  # fmt: skip
    procs = [
        subprocess.Popen(analytics_cmd("scheduler"), env=env,  # noqa: S603
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(2)
    ]  # fmt: skip
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)


def test_one_active_failover_and_no_period_twice(schedulers, redis_server, namespace) -> None:  # type: ignore[no-untyped-def]
    client = redis_server.client()
    wait_until(lambda: _holder(client, namespace) is not None, timeout=20, message="no leader")
    wait_until(lambda: len(_hourly_starts(client, namespace)) >= 3, timeout=20)
    holder = _holder(client, namespace)
    assert holder is not None
    leader_pid = int(holder.split(":")[1])
    leader = next(p for p in schedulers if p.pid == leader_pid)
    standby = next(p for p in schedulers if p.pid != leader_pid)
    assert standby.poll() is None  # the standby runs, but does not hold the lease

    leader.send_signal(signal.SIGKILL)
    leader.wait(10)
    killed_at = time.monotonic()
    wait_until(
        lambda: (_holder(client, namespace) or "").split(":")[1:2] == [str(standby.pid)],
        timeout=4 * LEASE_S + 5,
        message="standby did not take over",
    )
    takeover_s = time.monotonic() - killed_at
    before = len(_hourly_starts(client, namespace))
    wait_until(lambda: len(_hourly_starts(client, namespace)) >= before + 3, timeout=20)

    standby.send_signal(signal.SIGTERM)
    assert standby.wait(15) == 0  # clean exit, lease released
    assert _holder(client, namespace) is None

    starts = _hourly_starts(client, namespace)
    assert len(starts) == len(set(starts)), "a period was enqueued twice"
    seconds = [int(datetime.fromisoformat(s).timestamp()) for s in starts]
    assert seconds == list(range(seconds[0], seconds[0] + len(seconds))), "a period was skipped"
    # The other jobs were enqueued too, on their documented queues.
    maint = [json.loads(m)["actor_name"] for m in client.hvals(f"{namespace}:maintenance.msgs")]
    assert {"purge_events_before", "check_dead_letters"} <= set(maint)
    warm = [json.loads(m)["actor_name"] for m in client.hvals(f"{namespace}:aggregations.msgs")]
    assert "warm_dashboard_cache" in warm
    print(f"takeover after SIGKILL: {takeover_s:.2f} s (lease {LEASE_S} s)")
