"""Backlog probes: how deep the high_priority queue is and how fast workers drain it.

Depth on Redis is ``HLEN <ns>:high_priority.msgs``: Dramatiq's Redis broker keeps each
message there from enqueue until ack, so it counts queued and in-flight messages. On
RabbitMQ it is the queue's ready messages (a passive declare). The drain rate
comes from a counter of processed messages the workers keep (:class:`DrainCounter`), sampled by the API over a sliding window: real throughput, not a
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
    """Worker side: count messages that left ``queue`` (done, failed or skipped).

    Counted in memory and added to Redis by one thread per worker process every
    ``flush_s`` (and once more at shutdown): one ``INCRBY`` per half second instead of a
    round trip per message. The API reads a rate over 30 s, so the lag does not show; a
    SIGKILLed worker loses at most its last ``flush_s`` of counts, of a statistic.
    """

    def __init__(self, client: redis.Redis, namespace: str, queue: str = QUEUE,
                 flush_s: float = 0.5) -> None:  # fmt: skip
        self.client, self.key, self.queue = client, drained_key(namespace, queue), queue
        self.flush_s = flush_s
        self._pending = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _count(self, message: Any) -> None:
        if message.queue_name == self.queue:
            with self._lock:
                self._pending += 1

    def flush(self) -> None:
        with self._lock:
            n, self._pending = self._pending, 0
        if not n:
            return
        try:
            self.client.incrby(self.key, n)
        except redis.RedisError:  # a statistic: never fail over it; keep it for next time
            with self._lock:
                self._pending += n

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="drain-counter", daemon=True)
        self._thread.start()

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.flush()

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: Any = None) -> None:  # fmt: skip
        self._count(message)

    def after_skip_message(self, broker: Any, message: Any) -> None:
        self._count(message)


class _SampledBacklog:
    """API side: depth (cached ``cache_s``) and drain rate over the last ``window_s``, from
    samples of ``(depth, drained)`` that :meth:`_read` takes. A failed read skips the
    probe for 5 s (fail open: ingest meets a broken broker on its own, and 503s then)."""

    def __init__(self, *, cache_s: float = 0.5, window_s: float = 30.0) -> None:
        self.cache_s, self.window_s = cache_s, window_s
        self._samples: deque[tuple[float, int, int]] = deque()  # (t, depth, drained)
        self._lock = threading.Lock()
        self._last_warn = 0.0
        self._skip_until = 0.0

    def _read(self) -> tuple[int, int]:
        raise NotImplementedError

    def _sample(self) -> tuple[float, int, int] | None:
        now = time.monotonic()
        if now < self._skip_until:
            return None  # the broker failed a moment ago: ingest will meet it on its own
        with self._lock:
            if self._samples and now - self._samples[-1][0] < self.cache_s:
                return self._samples[-1]
        try:
            depth, drained = self._read()
        except Exception as exc:  # noqa: BLE001 - a probe: never fail a request over it
            if now - self._last_warn > 10:
                self._last_warn = now
                log.warning("backlog probe unavailable", error=str(exc))
            self._skip_until = now + 5.0
            return None
        sample = (now, depth, drained)
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


class RedisBacklog(_SampledBacklog):
    """Depth and the workers' drain counter, both from the Redis broker, in one round trip."""

    def __init__(self, client: redis.Redis, namespace: str, queue: str = QUEUE, *,
                 cache_s: float = 0.5, window_s: float = 30.0) -> None:  # fmt: skip
        super().__init__(cache_s=cache_s, window_s=window_s)
        self.client = client
        self.msgs_key = f"{namespace}:{queue}.msgs"
        self.drained_key = drained_key(namespace, queue)

    def _read(self) -> tuple[int, int]:
        pipe = self.client.pipeline(transaction=False)
        pipe.hlen(self.msgs_key)
        pipe.get(self.drained_key)
        depth, drained = pipe.execute()
        return int(depth), int(drained or 0)


class RabbitBacklog(_SampledBacklog):
    """Depth from RabbitMQ (messages ready in the queue: unlike the Redis figure, not
    those a worker holds unacknowledged), the drain counter from the Redis beside it when
    there is one (workers keep it there, :class:`DrainCounter`); without it no rate, so
    ``Retry-After`` is the configured maximum."""

    def __init__(self, broker: Any, client: redis.Redis | None, namespace: str,
                 queue: str = QUEUE, *, cache_s: float = 0.5, window_s: float = 30.0) -> None:  # fmt: skip
        super().__init__(cache_s=cache_s, window_s=window_s)
        self.broker, self.client, self.queue = broker, client, queue
        self.drained_key = drained_key(namespace, queue)

    def _read(self) -> tuple[int, int]:
        ready = self.broker.get_queue_message_counts(self.queue)[0]
        drained = int(self.client.get(self.drained_key) or 0) if self.client is not None else 0
        return int(ready), drained


class StubBacklog:
    """Depth of a StubBroker's queue (unit tests and the stub broker); no drain rate."""

    def __init__(self, broker: Any, queue: str = QUEUE) -> None:
        self.broker, self.queue = broker, queue

    def depth(self) -> int:
        q = getattr(self.broker, "queues", {}).get(self.queue)
        return int(q.qsize()) if q is not None else 0

    def drain_rate(self) -> float | None:
        return None
