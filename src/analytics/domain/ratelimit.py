"""Rate-limit quotas and decisions (GCRA: a token bucket described by two numbers).

A quota lets ``rate_per_minute`` units through per minute on average, with bursts of up
to ``burst`` units at once. A unit is a request, or an event on ingest routes (a batch of
500 events costs 500).
"""

from __future__ import annotations

import math

import msgspec


class Quota(msgspec.Struct, frozen=True):
    rate_per_minute: int
    burst: int

    @property
    def emission_interval_ms(self) -> float:
        """Milliseconds one unit 'costs' in the bucket."""
        return 60_000 / self.rate_per_minute

    @property
    def slack_ms(self) -> float:
        """How far past ``now`` a request's admission time may lie and still be admitted:
        the rounding of the limiters' float sums. ``TAT + n * interval - burst * interval``
        of a full bucket charged 1 unit, then the rest (ingest's two steps), came out a
        few ulps of a millisecond timestamp (~0.25 us each) over ``now`` and refused a
        batch of exactly the burst (rate 12345/min, burst 60: 16 of 20 fresh buckets).
        10 us, or half an interval at rates over 3 million a minute: never a whole unit
        (above some 10 million a minute an interval is a few ulps of such a timestamp, and
        admissions are that imprecise with or without the slack)."""
        return min(SLACK_MS, self.emission_interval_ms / 2)


SLACK_MS = 0.01


class RateDecision(msgspec.Struct, frozen=True):
    """The limiter's answer, with what the ``RateLimit-*`` headers need."""

    allowed: bool
    limit: int  # the burst: the most one could send right now with a full bucket
    remaining: int  # units that could still be sent right now
    reset_s: int  # seconds until the bucket is full again
    retry_after_s: int  # seconds until this request would be allowed (0 when allowed)
    policy: str = ""  # e.g. '1000;w=60;burst=2000'

    def headers(self) -> dict[str, str]:
        out = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }
        if self.policy:
            out["RateLimit-Policy"] = self.policy
        if not self.allowed:
            out["Retry-After"] = str(self.retry_after_s)
        return out


ALLOW_ALL = RateDecision(allowed=True, limit=0, remaining=0, reset_s=0, retry_after_s=0)


def decision(
    quota: Quota, allowed: bool, remaining: int, reset_ms: int, retry_ms: int
) -> RateDecision:
    """Build a decision from GCRA's numbers (milliseconds), rounding up to whole seconds."""
    return RateDecision(
        allowed=allowed,
        limit=quota.burst,
        remaining=max(0, remaining),
        reset_s=math.ceil(reset_ms / 1000),
        retry_after_s=max(1, math.ceil(retry_ms / 1000)) if not allowed else 0,
        policy=f"{quota.burst};w={max(1, round(quota.burst * 60 / quota.rate_per_minute))}",
    )
