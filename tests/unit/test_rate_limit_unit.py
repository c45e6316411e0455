"""GCRA decisions (the in-memory twin of the Redis script) and the overload Retry-After."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from analytics.adapters import backlog as backlog_module
from analytics.adapters.backlog import DrainCounter, _SampledBacklog
from analytics.adapters.memory import FixedBacklog, InMemoryRateLimiter
from analytics.application.overload import check_backlog, retry_after_s
from analytics.domain.errors import Overloaded
from analytics.domain.ratelimit import Quota

pytestmark = pytest.mark.unit


class FakeMs:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def test_burst_then_refill_at_the_rate() -> None:
    ms = FakeMs()
    limiter = InMemoryRateLimiter(now_ms=ms)
    quota = Quota(rate_per_minute=60, burst=10)  # one unit per second, ten at once
    decisions = [limiter.hit("k", 1, quota) for _ in range(10)]
    assert all(d.allowed for d in decisions)
    assert decisions[-1].remaining == 0
    denied = limiter.hit("k", 1, quota)
    assert not denied.allowed and denied.retry_after_s == 1
    assert denied.headers()["Retry-After"] == "1" and denied.headers()["RateLimit-Limit"] == "10"
    ms.t += 1000
    assert limiter.hit("k", 1, quota).allowed
    assert not limiter.hit("k", 1, quota).allowed


def test_cost_counts_units_and_buckets_are_separate() -> None:
    ms = FakeMs()
    limiter = InMemoryRateLimiter(now_ms=ms)
    quota = Quota(rate_per_minute=600, burst=500)
    assert limiter.hit("a", 500, quota).allowed  # a batch of 500 spends the whole burst
    d = limiter.hit("a", 1, quota)
    assert not d.allowed and d.retry_after_s == 1
    assert limiter.hit("b", 500, quota).allowed
    assert not limiter.hit("c", 501, quota).allowed  # more than the burst never fits
    ms.t += 10_000  # 10 s at 10/s refills 100
    assert limiter.hit("a", 100, quota).allowed
    assert not limiter.hit("a", 1, quota).allowed


def test_full_buckets_are_forgotten_and_busy_ones_kept() -> None:
    """Per-address buckets of clients rotating addresses (QA: 200,000 kept for good)."""
    ms = FakeMs()
    limiter = InMemoryRateLimiter(now_ms=ms)
    quota = Quota(rate_per_minute=300, burst=60)  # one unit per 200 ms
    assert limiter.hit("busy", 60, quota).allowed  # empty for 12 s
    most_dropped_at_once = 0
    for i in range(200_000):
        before = len(limiter._tat)
        limiter.hit(f"anon:2001:db8::{i:x}", 1, quota)
        most_dropped_at_once = max(most_dropped_at_once, before + 1 - len(limiter._tat))
        ms.t += 0.05  # 10 s in all: the first addresses' buckets are full again
    assert len(limiter._tat) < 10_000, len(limiter._tat)
    # A slice per hit, never the whole table under the lock (review: 200 ms at 600,000).
    assert 0 < most_dropped_at_once <= InMemoryRateLimiter.SWEEP_SLICE
    assert not limiter.hit("busy", 60, quota).allowed  # 2 s from full: its state was kept
    assert limiter.hit("anon:2001:db8::0", 60, quota).allowed  # forgotten = full


@given(rate=st.integers(1, 1_000_000), burst=st.integers(2, 10_000),
       now=st.floats(0, 4e12, allow_nan=False))  # fmt: skip
def test_a_full_bucket_admits_exactly_its_burst_in_one_or_two_charges(
    rate: int, burst: int, now: float
) -> None:
    """As the Redis script (tests/integration/test_rate_limit_redis.py): with float
    milliseconds a charge of exactly the burst, at once or as 1 + the rest, was refused
    for some quotas (rate 7, burst 3: a single charge)."""
    quota = Quota(rate_per_minute=rate, burst=burst)
    limiter = InMemoryRateLimiter(now_ms=lambda: now)
    assert limiter.hit("one", burst, quota).allowed
    assert limiter.hit("two", 1, quota).allowed
    second = limiter.hit("two", burst - 1, quota)
    assert second.allowed and second.remaining == 0
    assert not limiter.hit("two", 1, quota).allowed
    assert not limiter.hit("over", burst + 1, quota).allowed


def test_retry_after_from_depth_and_drain_rate() -> None:
    assert retry_after_s(1500, 1000, 100.0, 300) == 6  # 501 over, 100/s
    assert retry_after_s(1500, 1000, None, 300) == 300  # nothing drains: the cap
    assert retry_after_s(10**9, 1000, 1.0, 300) == 300
    assert retry_after_s(1001, 1000, 1000.0, 300) == 1


def test_check_backlog() -> None:
    check_backlog(FixedBacklog(1000, 5.0), threshold=1000, max_retry_s=60)
    with pytest.raises(Overloaded) as err:
        check_backlog(FixedBacklog(1100, 10.0), threshold=1000, max_retry_s=60)
    assert err.value.retry_after == 11


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class ScriptedBacklog(_SampledBacklog):
    """The sampling of the real probes over a scripted broker: each read pops the next
    ``(depth, drained)``, or raises when it is an exception."""

    def __init__(self, reads: list[tuple[int, int] | Exception], **kw: float) -> None:
        super().__init__(**kw)
        self.reads = reads
        self.calls = 0

    def _read(self) -> tuple[int, int]:
        self.calls += 1
        nxt = self.reads.pop(0)
        if isinstance(nxt, Exception):
            raise nxt
        return nxt


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(backlog_module, "time", SimpleNamespace(monotonic=c))
    return c


def test_the_drain_rate_is_measured_over_the_window_only(clock: Clock) -> None:
    """Mutation QA: samples older than ``window_s`` are dropped, so the drain rate (and with
    it ``Retry-After``) is today's throughput. Kept for ever, a burst of work drained long
    ago made the rate look high for the rest of the process's life: 429s told clients to
    come back far too early (here 12.6/s instead of the 0.25/s drained now)."""
    probe = ScriptedBacklog([(0, 0), (500, 1000), (500, 1010)], cache_s=0, window_s=30)
    probe.depth()
    clock.t += 40
    probe.depth()  # 1000 drained in the first 40 s
    clock.t += 40
    assert probe.drain_rate() == pytest.approx(10 / 40)  # 10 drained in the last 40 s


def test_a_failed_backlog_probe_admits_ingest(clock: Clock) -> None:
    """Mutation QA: the probe fails open. A broker that cannot be read counts as an empty
    queue, so ingest goes on (and meets the broker on its own); read as a huge depth, every
    ingest request got a 503 "overloaded" while the probe was down."""
    probe = ScriptedBacklog([ConnectionError("broker down")], cache_s=0)
    assert probe.depth() == 0
    check_backlog(probe, threshold=1000, max_retry_s=60)  # no Overloaded


def test_a_failed_backlog_probe_is_not_retried_for_five_seconds(clock: Clock) -> None:
    """Mutation QA: after a failed read the probe rests 5 s. Without that, every ingest
    request paid a round trip to the broken broker (a connect timeout each) before its own
    enqueue, and logged nothing more useful."""
    probe = ScriptedBacklog([ConnectionError("broker down"), (7, 0)], cache_s=0)
    assert probe.depth() == 0 and probe.calls == 1
    clock.t += 4.9
    assert probe.depth() == 0 and probe.drain_rate() is None
    assert probe.calls == 1, "the broker was probed again within 5 s of a failure"
    clock.t += 0.2
    assert probe.depth() == 7 and probe.calls == 2


class FlakyCounterClient:
    """Redis as DrainCounter uses it: ``INCRBY``, failing while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.values: dict[str, int] = {}

    def incrby(self, key: str, n: int) -> int:
        if self.down:
            raise redis.ConnectionError("redis down")
        self.values[key] = self.values.get(key, 0) + n
        return self.values[key]


def test_the_drain_counter_counts_its_queue_only_and_keeps_counts_redis_refused() -> None:
    """Mutation QA: the drain rate behind ``Retry-After`` is high_priority's throughput.
    Messages of other queues (aggregations, maintenance) must not count, or the rate looks
    higher than ingest's queue drains; and a flush Redis refused is kept for the next one,
    not dropped (the rate then read too low, Retry-After too long)."""
    client = FlakyCounterClient()
    counter = DrainCounter(client, "t")  # type: ignore[arg-type]
    ingest, other = SimpleNamespace(queue_name="high_priority"), SimpleNamespace(queue_name="aggregations")
    counter.after_process_message(None, ingest)
    counter.after_skip_message(None, ingest)
    counter.after_process_message(None, other)
    counter.after_skip_message(None, other)
    client.down = True
    counter.flush()  # refused: kept
    client.down = False
    counter.after_process_message(None, ingest)
    counter.flush()
    assert client.values == {"t:stats:high_priority:drained": 3}
