"""``analytics check worker|scheduler``: container health checks for processes with no HTTP.

Exit status 0 when healthy, 1 with one line saying why when not (Docker and compose only
look at the status; the line lands in ``docker inspect``). Every call is bounded by short
socket timeouts so a check never hangs.

- ``worker``: Redis answers, and every queue this worker consumes has a heartbeat newer
  than ``--max-age`` seconds (``<ns>:heartbeat:<queue>``, written every few seconds by the
  worker's heartbeat middleware).
- ``scheduler``: Redis answers and some scheduler holds the leader lease
  (``<ns>:scheduler:leader``): a standby is healthy while a leader exists; when no process
  can take the lease, every scheduler container turns unhealthy.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from typing import Any

import redis

from analytics.settings import Settings


class Unhealthy(Exception):
    """The checked component is not healthy; the message says why."""


def _client(settings: Settings, timeout_s: float) -> redis.Redis:
    kwargs: dict[str, Any] = {
        **settings.redis_kwargs(),
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
    }
    return redis.Redis(**kwargs)


def heartbeat_age(raw: bytes | None, now: float) -> float | None:
    """Seconds since the heartbeat in ``raw`` (JSON with ``at``, unix seconds), or None."""
    if raw is None:
        return None
    try:
        return now - float(json.loads(raw)["at"])
    except (ValueError, KeyError, TypeError):
        return None


def check_worker(
    client: redis.Redis, namespace: str, queues: Iterable[str], max_age_s: float
) -> str:
    names = list(queues)
    raw = client.mget([f"{namespace}:heartbeat:{q}" for q in names])
    now = time.time()
    stale = []
    for queue, value in zip(names, raw, strict=True):
        age = heartbeat_age(value, now)
        if age is None or age > max_age_s:
            stale.append(f"{queue} ({'none' if age is None else f'{age:.0f}s old'})")
    if stale:
        raise Unhealthy(f"no recent worker heartbeat for: {', '.join(stale)}")
    return f"worker heartbeats fresh for {', '.join(names)}"


def check_scheduler(client: redis.Redis, namespace: str) -> str:
    leader = client.get(f"{namespace}:scheduler:leader")
    if leader is None:
        raise Unhealthy("no scheduler holds the leader lease")
    owner = leader.decode() if isinstance(leader, bytes) else str(leader)
    return f"scheduler leader: {owner}"


def run_check(args: argparse.Namespace, settings: Settings) -> int:
    client = _client(settings, args.timeout)
    try:
        client.ping()
        if args.component == "worker":
            line = check_worker(client, settings.namespace, args.queues, args.max_age)
        else:
            line = check_scheduler(client, settings.namespace)
    except redis.RedisError as exc:
        print(f"unhealthy: Redis unreachable: {exc}")
        return 1
    except Unhealthy as exc:
        print(f"unhealthy: {exc}")
        return 1
    finally:
        client.close()
    print(f"healthy: {line}")
    return 0
