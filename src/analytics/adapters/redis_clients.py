"""Redis clients built from the settings, all with one failure policy.

redis-py (6 and later) retries a command three times with exponential backoff by
default, timeouts included. Against a Redis that is alive but does not answer (stopped
with SIGSTOP, stuck on a slow disk under ``appendfsync always``, a network path that
drops packets without a reset) every command then took four socket timeouts and the
backoff in between, and an ingest request that makes three Redis calls (the backlog
probe, the rate limiter, the enqueue) hung for a minute and a half instead of answering
503 after ``ANALYTICS_ENQUEUE_TIMEOUT_S``.

The policy here: retries on a connection error only, never on a timeout. A refused or
reset connection (Redis restarting, still loading its append-only file, a pooled
connection gone stale) fails at once, so up to eight retries with backoff from 10 ms to
0.5 s (about 2 s in all) ride through a restart of a second or so, as redis-py's default did
(with one immediate retry, the fault suite's Redis restart turned into ten seconds of
503s: the broker breaker opened). A Redis that did not answer within the socket timeout
is down for this call, and the caller decides what that means: 503 for ingest, fail open
for the rate limiter and the backlog probe, a retry later for the scheduler and the
workers (whose messages stay in Redis until acknowledged, so nothing is lost by failing
a call).
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from analytics.settings import Settings

#: Socket timeout of the calls a request makes *beside* its real work (the rate limiter,
#: the backlog probe): both fail open, so a stalled Redis should cost a request this much,
#: not ``ANALYTICS_REDIS_TIMEOUT_S``, before the enqueue meets it on its own.
SIDE_CALL_TIMEOUT_S = 0.5


def fail_fast_retry() -> Retry:
    """Up to 8 retries on a connection error (up to about 2 s of backoff in all); none on a
    timeout (module docstring)."""
    return Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.01), 8,
                 supported_errors=(redis.ConnectionError,))  # fmt: skip


def redis_client(settings: Settings, *, timeout_s: float | None = None, **kwargs: Any) -> redis.Redis:
    """A client for the Redis the settings name, with :func:`fail_fast_retry`.

    ``timeout_s`` lowers the socket timeouts below ``ANALYTICS_REDIS_TIMEOUT_S`` (never
    raises them); ``kwargs`` go to ``redis.Redis`` as they are.
    """
    options: dict[str, Any] = {**settings.redis_kwargs(), "retry": fail_fast_retry(), **kwargs}
    if timeout_s is not None:
        for name in ("socket_timeout", "socket_connect_timeout"):
            options[name] = min(float(options[name]), timeout_s)
    return redis.Redis(**options)


def side_call_client(settings: Settings) -> redis.Redis:
    """For the rate limiter and the backlog probe (:data:`SIDE_CALL_TIMEOUT_S`)."""
    return redis_client(settings, timeout_s=SIDE_CALL_TIMEOUT_S)
