"""``analytics check worker|scheduler``: container health checks for processes with no HTTP.

Exit status 0 when healthy, 1 with one line saying why when not (Docker and compose only
look at the status; the line lands in ``docker inspect``). Every call is bounded by short
socket timeouts so a check never hangs.

- ``worker``: Redis answers, and every queue this worker consumes has a heartbeat newer
  than ``--max-age`` seconds (default ``ANALYTICS_HEARTBEAT_STALE_S``; the keys
  ``<ns>:heartbeat:<queue>`` are written every few seconds by the worker's heartbeat
  middleware, read through :class:`RedisProbe`).
- ``scheduler``: Redis answers and some scheduler holds the leader lease
  (``<ns>:scheduler:leader``): a standby is healthy while a leader exists; when no process
  can take the lease, every scheduler container turns unhealthy.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable

import redis

from analytics.adapters.redis_probe import RedisProbe
from analytics.settings import Settings


class Unhealthy(Exception):
    """The checked component is not healthy; the message says why."""


def check_worker(probe: RedisProbe, queues: Iterable[str], max_age_s: float) -> str:
    names = list(queues)
    now = time.time()
    stale = []
    for queue, beat in probe.heartbeats(names).items():
        age = None if beat is None else now - beat.at
        if age is None or age > max_age_s:
            stale.append(f"{queue} ({'none' if age is None else f'{age:.0f}s old'})")
    if stale:
        raise Unhealthy(f"no recent worker heartbeat for: {', '.join(stale)}")
    return f"worker heartbeats fresh for {', '.join(names)}"


def check_scheduler(probe: RedisProbe) -> str:
    leader = probe.client.get(f"{probe.ns}:scheduler:leader")
    if leader is None:
        raise Unhealthy("no scheduler holds the leader lease")
    owner = leader.decode() if isinstance(leader, bytes) else str(leader)
    return f"scheduler leader: {owner}"


def run_check(args: argparse.Namespace, settings: Settings) -> int:
    probe = RedisProbe.from_kwargs(settings.redis_kwargs(), settings.namespace, args.timeout)
    try:
        probe.ping()
        if args.component == "worker":
            max_age = args.max_age if args.max_age is not None else settings.heartbeat_stale_s
            line = check_worker(probe, args.queues, max_age)
        else:
            line = check_scheduler(probe)
    except redis.RedisError as exc:
        print(f"unhealthy: Redis unreachable: {exc}")
        return 1
    except Unhealthy as exc:
        print(f"unhealthy: {exc}")
        return 1
    finally:
        probe.client.close()
    print(f"healthy: {line}")
    return 0
