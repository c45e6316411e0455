"""Redis rate limiter: GCRA in one Lua script, shared by every worker and instance.

GCRA keeps one number per bucket, the "theoretical arrival time" (TAT): the moment the
bucket would be full again. A request of cost ``n`` is allowed when
``TAT + n * interval - burst * interval <= now``. The script reads and writes TAT
atomically inside Redis, so every gunicorn worker and every instance share one budget;
time comes from the Redis server (``TIME``), so instances with skewed clocks agree.

When Redis is unreachable the limiter *fails open* (allows the request and logs a line,
at most every 10 s, and skips Redis for a few seconds so requests do not each wait out a
connection timeout): rate limiting protects capacity, while Redis being down already means
ingest cannot queue and will answer 503 on its own; refusing all reads and writes because
the limiter's store is down would turn a partial outage into a total one.
"""

from __future__ import annotations

import math
import time

import redis
import structlog

from analytics.domain.ratelimit import ALLOW_ALL, Quota, RateDecision, decision

log = structlog.get_logger("analytics.ratelimit")

# KEYS[1] bucket; ARGV: interval_ms, burst, cost, slack_ms (Quota.slack_ms).
# Returns {allowed, remaining, reset_ms, retry_ms}.
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local slack = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local capacity = burst * interval
local new_tat = tat + cost * interval
local allow_at = new_tat - capacity
if allow_at > now + slack then
  local remaining = math.floor((capacity - (tat - now) + slack) / interval)
  if remaining < 0 then remaining = 0 end
  return {0, remaining, math.ceil(tat - now), math.ceil(allow_at - now)}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now) + 1000)
local remaining = math.floor((capacity - (new_tat - now) + slack) / interval)
return {1, remaining, math.ceil(new_tat - now), 0}
"""


class _Quiet:
    """Log a failure at most once per ``every`` seconds."""

    def __init__(self, every: float = 10.0) -> None:
        self.every, self.last = every, -math.inf

    def __call__(self, message: str, **kw: object) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            log.warning(message, **kw)


class RedisRateLimiter:
    def __init__(
        self, client: redis.Redis, namespace: str, *, retry_after_failure_s: float = 5.0
    ) -> None:
        self.client = client
        self.prefix = f"{namespace}:ratelimit:"
        self.script = client.register_script(GCRA_LUA)
        self._warn = _Quiet()
        self._skip_until = 0.0
        self.retry_after_failure_s = retry_after_failure_s

    def hit(self, bucket: str, cost: int, quota: Quota) -> RateDecision:
        if time.monotonic() < self._skip_until:
            return ALLOW_ALL  # Redis failed a moment ago: do not make every request wait on it
        try:
            allowed, remaining, reset_ms, retry_ms = self.script(
                keys=[self.prefix + bucket],
                args=[quota.emission_interval_ms, quota.burst, cost, quota.slack_ms],
            )
        except redis.RedisError as exc:
            self._warn("rate limiter unavailable; failing open", error=str(exc))
            self._skip_until = time.monotonic() + self.retry_after_failure_s
            return ALLOW_ALL
        return decision(quota, bool(allowed), int(remaining), int(reset_ms), int(retry_ms))
