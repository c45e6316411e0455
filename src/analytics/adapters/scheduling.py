"""Redis pieces of the scheduler: the leader lease and the per-period ledger.

Lease: ``SET key owner NX PX ttl`` to take it, a compare-and-set Lua script to renew or
release it (only the owner may). A killed leader's lease expires after ``ttl``; a standby
polling every ``ttl/3`` takes over within ``4/3 * ttl``.

Ledger: for each job a watermark (start of the last period enqueued) and a dedupe key per
period. One Lua script checks that the caller still holds the lease, claims the period
(``SET NX``), pushes the Dramatiq message onto the Redis broker's queue and advances the
watermark, atomically: a period's task is enqueued at most once, even across a failover
or a paused leader that lost its lease. The broker's enqueue hooks run around the script,
so a scheduled task gets a task status like any other.
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import dramatiq
import redis
import structlog
from dramatiq.brokers.redis import RedisBroker

log = structlog.get_logger("analytics.scheduler")

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""

# KEYS: lease, done, watermark, queue list, queue msgs
# ARGV: owner, period start, done ttl ms, broker message id, message data (empty: no push)
# Returns {1 claimed, 0 already done, -1 lease lost; the watermark before the claim or ''}.
_CLAIM = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then
  return {-1, ''}
end
local prev = redis.call('get', KEYS[3])
if tonumber(ARGV[2]) <= tonumber(prev or '-1e18') then
  return {0, ''}
end
if not redis.call('set', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[3]) then
  return {0, ''}
end
if ARGV[5] ~= '' then
  redis.call('hset', KEYS[5], ARGV[4], ARGV[5])
  redis.call('rpush', KEYS[4], ARGV[4])
end
redis.call('set', KEYS[3], ARGV[2])
return {1, prev or ''}
"""

# Undo a claim whose send failed (another broker than Redis), unless a later period was
# claimed meanwhile. KEYS: done, watermark; ARGV: owner, period start, previous watermark.
_UNCLAIM = """
if redis.call('get', KEYS[1]) ~= ARGV[1] or redis.call('get', KEYS[2]) ~= ARGV[2] then
  return 0
end
redis.call('del', KEYS[1])
if ARGV[3] == '' then
  redis.call('del', KEYS[2])
else
  redis.call('set', KEYS[2], ARGV[3])
end
return 1
"""


class LeaseLost(Exception):
    """This process no longer holds the scheduler lease."""


class RedisLease:
    def __init__(self, client: redis.Redis, key: str, *, ttl_ms: int, owner: str | None = None):
        self.client = client
        self.key = key
        self.ttl_ms = ttl_ms
        self.owner = owner or uuid4().hex
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def acquire(self) -> bool:
        return bool(self.client.set(self.key, self.owner, nx=True, px=self.ttl_ms))

    def renew(self) -> bool:
        return bool(self._renew(keys=[self.key], args=[self.owner, self.ttl_ms]))

    def release(self) -> bool:
        return bool(self._release(keys=[self.key], args=[self.owner]))

    def holder(self) -> str | None:
        value = self.client.get(self.key)
        return value.decode() if value is not None else None


class PeriodLedger:
    """Watermarks and per-period claims, fenced by the lease; enqueues through the broker."""

    def __init__(self, broker: dramatiq.Broker, client: redis.Redis, namespace: str) -> None:
        self.broker = broker
        self.client = client
        self.prefix = f"{namespace}:scheduler"
        self._claim = client.register_script(_CLAIM)
        self._unclaim = client.register_script(_UNCLAIM)

    def watermark(self, job: str) -> int | None:
        value = self.client.get(f"{self.prefix}:wm:{job}")
        return int(value) if value is not None else None

    def enqueue_once(
        self,
        lease: RedisLease,
        job: str,
        period_start: int,
        message: dramatiq.Message[Any],
        *,
        done_ttl_ms: int,
    ) -> bool:
        """Enqueue ``message`` for this job's period unless that period was enqueued before."""
        keys = [
            lease.key,
            f"{self.prefix}:done:{job}:{period_start}",
            f"{self.prefix}:wm:{job}",
        ]
        if isinstance(self.broker, RedisBroker):
            rid = str(uuid4())
            message = message.copy(options={"redis_message_id": rid})
            self.broker.emit_before("enqueue", message, None)
            queue = f"{self.broker.namespace}:{message.queue_name}"
            result, _ = self._claim(
                keys=[*keys, queue, queue + ".msgs"],
                args=[lease.owner, period_start, done_ttl_ms, rid, message.encode()],
            )
            if result == 1:  # the broker's own after-enqueue hooks (task status, metrics)
                self.broker.emit_after("enqueue", message, None)
        else:  # another broker: claim atomically, then send; a failed send undoes the claim
            result, previous = self._claim(
                keys=[*keys, "unused", "unused"],
                args=[lease.owner, period_start, done_ttl_ms, "", ""],
            )
            if result == 1:
                try:
                    self.broker.enqueue(message)
                except BaseException:
                    # The run is retried (30 s later, then every run): the period must
                    # still be due. It was marked done and the watermark moved past it,
                    # so every retry skipped it, and on RabbitMQ a reset connection or a
                    # confirm timeout lost that period's task for good (a review). A
                    # send that did reach the broker then runs twice: every scheduled
                    # task is idempotent (reconcile, retention, warm-up, checks).
                    if not self._unclaim(keys=keys[1:], args=[lease.owner, period_start, previous]):
                        log.warning("scheduled period not sent and not claimable again: a later"
                                    " period was claimed meanwhile", job=job, period=period_start)  # fmt: skip
                    raise
        if result == -1:
            raise LeaseLost(f"lease {lease.key} is held by another scheduler")
        return result == 1
