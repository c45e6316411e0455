"""Backlog probes: how deep the high_priority queue is and how fast workers drain it.

Depth is ``HLEN <ns>:high_priority.msgs``: Dramatiq's Redis broker keeps each message
there from enqueue until ack, so it counts queued and in-flight messages. The drain rate
comes from a counter the workers increment after every processed message
(:class:`DrainCounter`), sampled by the API over a sliding window: real throughput, not a
guess, so ``Retry-After`` = backlog above the threshold / drain rate.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import dramatiq
import redis
import structlog

log = structlog.get_logger("analytics.backlog")
QUEUE = "high_priority"


def drained_key(namespace: str, queue: str = QUEUE) -> str:
    return f"{namespace}:stats:{queue}:drained"


class DrainCounter(dramatiq.Middleware):
    """Worker side: count messages that left ``queue`` (done, failed or skipped)."""

    def __init__(self, client: redis.Redis, namespace: str, queue: str = QUEUE) -> None:
        self.client, self.key, self.queue = client, drained_key(namespace, queue), queue

    def _count(self, message: Any) -> None:
        if message.queue_name != self.queue:
            return
        try:
            self.client.incr(self.key)
        except redis.RedisError:  # a statistic: never fail a message over it
            pass

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: Any = None) -> None:  # fmt: skip
        self._count(message)

    def after_skip_message(self, broker: Any, message: Any) -> None:
        self._count(message)


class RedisBacklog:
    """API side: depth (cached ``cache_s``) and drain rate over the last ``window_s``."""

    def __init__(self, client: redis.Redis, namespace: str, queue: str = QUEUE, *,
                 cache_s: float = 0.5, window_s: float = 30.0) -> None:  # fmt: skip
        self.client = client
        self.msgs_key = f"{namespace}:{queue}.msgs"
        self.drained_key = drained_key(namespace, queue)
        self.cache_s, self.window_s = cache_s, window_s
        self._samples: deque[tuple[float, int, int]] = deque()  # (t, depth, drained)
        self._lock = threading.Lock()
        self._last_warn = 0.0
        self._skip_until = 0.0

    def _sample(self) -> tuple[float, int, int] | None:
        now = time.monotonic()
        if now < self._skip_until:
            return None  # Redis failed a moment ago: ingest will meet it (and 503) on its own
        with self._lock:
            if self._samples and now - self._samples[-1][0] < self.cache_s:
                return self._samples[-1]
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hlen(self.msgs_key)
            pipe.get(self.drained_key)
            depth, drained = pipe.execute()
        except redis.RedisError as exc:
            if now - self._last_warn > 10:
                self._last_warn = now
                log.warning("backlog probe unavailable", error=str(exc))
            self._skip_until = now + 5.0
            return None
        sample = (now, int(depth), int(drained or 0))
        with self._lock:
            self._samples.append(sample)
            while len(self._samples) > 2 and now - self._samples[0][0] > self.window_s:
                self._samples.popleft()
        return sample

    def depth(self) -> int:
        sample = self._sample()
        return sample[1] if sample else 0

    def drain_rate(self) -> float | None:
        self._sample()
        with self._lock:
            if len(self._samples) < 2:
                return None
            (t0, _, d0), (t1, _, d1) = self._samples[0], self._samples[-1]
        if t1 <= t0 or d1 <= d0:
            return None
        return (d1 - d0) / (t1 - t0)


class StubBacklog:
    """Depth of a StubBroker's queue (unit tests and the stub broker); no drain rate."""

    def __init__(self, broker: Any, queue: str = QUEUE) -> None:
        self.broker, self.queue = broker, queue

    def depth(self) -> int:
        q = getattr(self.broker, "queues", {}).get(self.queue)
        return int(q.qsize()) if q is not None else 0

    def drain_rate(self) -> float | None:
        return None
