"""The circuit breaker's state machine on a fake clock, its decorator-adapters, the
deferral of worker messages, and the settings that configure them."""

from __future__ import annotations

import threading

import pytest

from analytics.adapters.circuit_breaker import BreakerRegistry, CircuitBreaker, State
from analytics.adapters.deferral import DeferralMiddleware, Deferred, deferring
from analytics.adapters.guarded import GuardedCache, GuardedProxy, GuardedTaskQueue
from analytics.adapters.memory import InMemoryEventRepository
from analytics.domain.errors import (
    BadQuery,
    CacheCircuitOpen,
    CircuitOpen,
    QueueCircuitOpen,
    QueueUnavailable,
    StorageCircuitOpen,
    StorageUnavailable,
)
from analytics.settings import Settings, SettingsError


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Flaky:
    """A dependency that fails while ``down``; counts the calls that reached it."""

    def __init__(self) -> None:
        self.down = False
        self.calls = 0

    def op(self, x: int = 1) -> int:
        self.calls += 1
        if self.down:
            raise StorageUnavailable("down")
        return x


def make(threshold: int = 3, reset: float = 10.0) -> tuple[CircuitBreaker, FakeClock, list[str]]:
    clock = FakeClock()
    b = CircuitBreaker(
        "storage", failure_threshold=threshold, reset_timeout_s=reset,
        on_open=StorageCircuitOpen, clock=clock,
    )  # fmt: skip
    seen: list[str] = []
    b.add_listener(lambda br, old, new: seen.append(f"{old}->{new}"))
    return b, clock, seen


def test_closed_open_half_open_closed() -> None:
    b, clock, seen = make(threshold=3, reset=10)
    dep = Flaky()
    assert b.call(dep.op, 5) == 5
    dep.down = True
    for _ in range(2):
        with pytest.raises(StorageUnavailable) as info:
            b.call(dep.op)
        assert not isinstance(info.value, CircuitOpen)
        assert b.state is State.CLOSED  # a run of 3 is needed
    with pytest.raises(StorageCircuitOpen) as tripped:  # the failure that opens it says so
        b.call(dep.op)
    assert isinstance(tripped.value.__cause__, StorageUnavailable)
    assert b.state is State.OPEN
    reached = dep.calls
    with pytest.raises(StorageCircuitOpen) as info:  # fails fast: the dependency is not called
        b.call(dep.op)
    assert dep.calls == reached
    assert info.value.retry_after == 10
    clock.t += 4
    assert b.retry_after() == pytest.approx(6)
    with pytest.raises(StorageCircuitOpen):
        b.call(dep.op)
    clock.t += 6
    dep.down = False
    assert b.call(dep.op, 7) == 7  # the trial call
    assert b.state is State.CLOSED
    assert seen == ["closed->open", "open->half_open", "half_open->closed"]
    assert b.opened == 1 and b.rejected == 2


def test_failed_trial_reopens_for_another_cool_down() -> None:
    b, clock, seen = make(threshold=1, reset=5)
    dep = Flaky()
    dep.down = True
    with pytest.raises(StorageUnavailable):
        b.call(dep.op)
    clock.t += 5
    with pytest.raises(StorageCircuitOpen):  # the trial reached the dependency and failed
        b.call(dep.op)
    assert dep.calls == 2
    assert b.state is State.OPEN
    assert b.retry_after() == pytest.approx(5)
    assert seen == ["closed->open", "open->half_open", "half_open->open"]


def test_a_success_resets_the_run_of_failures() -> None:
    b, _, _ = make(threshold=2)
    dep = Flaky()
    for _ in range(5):
        dep.down = True
        with pytest.raises(StorageUnavailable):
            b.call(dep.op)
        dep.down = False
        b.call(dep.op)
    assert b.state is State.CLOSED


def test_domain_errors_do_not_count() -> None:
    b, _, _ = make(threshold=1)

    def bad() -> None:
        raise BadQuery("start", "nope")

    for _ in range(3):
        with pytest.raises(BadQuery):
            b.call(bad)
    assert b.state is State.CLOSED


def test_half_open_lets_one_trial_through_at_a_time() -> None:
    b, clock, _ = make(threshold=1, reset=1)
    with pytest.raises(StorageCircuitOpen):
        b.call(lambda: (_ for _ in ()).throw(RuntimeError("x")))
    clock.t += 1
    entered, release = threading.Event(), threading.Event()

    def slow() -> str:
        entered.set()
        release.wait(5)
        return "ok"

    results: list[object] = []
    t = threading.Thread(target=lambda: results.append(b.call(slow)))
    t.start()
    assert entered.wait(5)
    assert b.state is State.HALF_OPEN
    with pytest.raises(StorageCircuitOpen):  # a second caller fails fast during the trial
        b.call(lambda: "other")
    release.set()
    t.join(5)
    assert results == ["ok"] and b.state is State.CLOSED


class Interrupted(BaseException):
    """As dramatiq's time limit or shutdown interrupt: no verdict on the dependency."""


def test_an_interrupted_call_from_before_the_opening_does_not_free_the_trial_slot() -> None:
    """A call let in while closed, interrupted after the breaker opened and went
    half-open, freed the running trial's slot: a second trial got in (a review)."""
    b, clock, _ = make(threshold=1, reset=1)
    stale_in, stale_go = threading.Event(), threading.Event()
    trial_in, trial_go = threading.Event(), threading.Event()

    def stale() -> None:
        stale_in.set()
        stale_go.wait(5)
        raise Interrupted

    def trial() -> str:
        trial_in.set()
        trial_go.wait(5)
        return "ok"

    outcomes: list[object] = []

    def run(fn):  # type: ignore[no-untyped-def]
        try:
            outcomes.append(b.call(fn))
        except BaseException as exc:  # noqa: BLE001 - the outcome under test
            outcomes.append(type(exc).__name__)

    old = threading.Thread(target=run, args=(stale,))
    old.start()
    assert stale_in.wait(5)  # admitted while closed
    with pytest.raises(StorageCircuitOpen):
        b.call(lambda: (_ for _ in ()).throw(RuntimeError("x")))  # opens it
    clock.t += 1
    first = threading.Thread(target=run, args=(trial,))
    first.start()
    assert trial_in.wait(5) and b.state is State.HALF_OPEN
    stale_go.set()
    old.join(5)
    with pytest.raises(StorageCircuitOpen):  # still one trial at a time
        b.call(lambda: "second trial")
    trial_go.set()
    first.join(5)
    assert outcomes == ["Interrupted", "ok"] and b.state is State.CLOSED


def test_an_interrupt_in_the_half_open_listener_frees_the_trial_slot() -> None:
    """The open -> half-open listener logs; an interrupt landing there left the trial
    slot taken, and every later call failed fast until a restart (a review)."""
    b, clock, _ = make(threshold=1, reset=1)
    with pytest.raises(StorageCircuitOpen):
        b.call(lambda: (_ for _ in ()).throw(RuntimeError("x")))
    clock.t += 1
    interrupt = [True]

    def listener(br, old, new):  # type: ignore[no-untyped-def]
        if interrupt and new is State.HALF_OPEN:
            interrupt.clear()
            raise Interrupted

    b.add_listener(listener)
    with pytest.raises(Interrupted):
        b.call(lambda: "never runs")
    assert b.call(lambda: "the trial") == "the trial" and b.state is State.CLOSED


def test_guarded_proxy_keeps_the_port_and_the_adapter_type() -> None:
    repo = InMemoryEventRepository()
    b, _, _ = make(threshold=1)
    guarded = GuardedProxy(repo, b)
    assert isinstance(guarded, InMemoryEventRepository)
    assert guarded.count() == 0 and guarded.add_many([]) == []
    assert b.calls == 2


def test_guarded_task_queue_fails_fast_with_retry_after() -> None:
    class DeadQueue:
        calls = 0

        def enqueue_events(self, events: object) -> str:
            DeadQueue.calls += 1
            raise QueueUnavailable("the broker did not confirm in time")

    clock = FakeClock()
    b = CircuitBreaker("broker", failure_threshold=2, reset_timeout_s=30,
                       on_open=QueueCircuitOpen, clock=clock)  # fmt: skip
    q = GuardedTaskQueue(DeadQueue(), b)
    with pytest.raises(QueueUnavailable):
        q.enqueue_events([])
    with pytest.raises(QueueCircuitOpen):  # the tripping failure
        q.enqueue_events([])
    with pytest.raises(QueueUnavailable) as info:
        q.enqueue_events([])
    assert isinstance(info.value, QueueCircuitOpen)
    assert info.value.retry_after == 30
    assert DeadQueue.calls == 2


def test_guarded_cache_reads_miss_while_open_and_invalidation_still_raises() -> None:
    class BrokenCache:
        hits = misses = errors = 0

        def get_many(self, keys: list[str]) -> list[bytes | None]:
            self.errors += 1  # what the Redis adapter does: count, answer a miss
            self.misses += len(keys)
            return [None] * len(keys)

        def versions(self, scopes: list[str]) -> list[int] | None:
            self.errors += 1
            return None

        def bump(self, scopes: list[str]) -> None:
            raise AssertionError("not reached while open")

    clock = FakeClock()
    b = CircuitBreaker("cache", failure_threshold=2, reset_timeout_s=5, clock=clock,
                       on_open=CacheCircuitOpen)  # fmt: skip
    cache = GuardedCache(BrokenCache(), b)
    assert cache.get_many(["a"]) == [None]
    assert cache.versions(["d"]) is None
    assert b.state is State.OPEN  # errors counted by the adapter are failures here
    assert cache.get_many(["a", "b"]) == [None, None]
    assert cache.misses == 3  # 1 from the adapter + 2 skipped
    with pytest.raises(CacheCircuitOpen):  # a CacheUnavailable the worker defers on
        cache.bump(["2026-01-01"])


def test_registry_snapshot() -> None:
    reg = BreakerRegistry()
    b, _, _ = make(threshold=1)
    reg.add(b)
    b.record_failure()
    snap = reg.snapshot()
    assert snap["storage"]["state"] == "open" and reg.open_names() == ["storage"]


# --- deferral --------------------------------------------------------------------------
class Msg:
    message_id = "m1"

    def __init__(self, **options: object) -> None:
        self.options = dict(options)


def test_deferral_sets_a_growing_capped_delay_and_keeps_the_retry_budget() -> None:
    mw = DeferralMiddleware(base_s=2, max_s=10)

    @deferring
    def actor() -> None:
        raise StorageCircuitOpen("storage", 1.5)

    msg = Msg(retries=3)
    delays = []
    for _ in range(5):
        with pytest.raises(Deferred) as info:
            actor()
        exc = info.value
        mw.after_process_message(None, msg, exception=exc)  # type: ignore[arg-type]
        delays.append(exc.delay)
        assert msg.options["retries"] == 2  # Retries adds one back right after
        msg.options["retries"] += 1  # ... as Retries does
    assert msg.options["deferrals"] == 5
    assert 2000 <= delays[0] <= 2500 and 4000 <= delays[1] <= 5000
    assert all(d <= 12_500 for d in delays) and delays[-1] >= 10_000
    mw.after_process_message(None, msg, exception=RuntimeError("x"))  # type: ignore[arg-type]
    assert msg.options["retries"] == 3  # other failures are left to Retries


def test_deferred_is_a_dramatiq_retry() -> None:
    import dramatiq

    assert issubclass(Deferred, dramatiq.Retry)
    assert isinstance(StorageCircuitOpen("s", 1), CircuitOpen | StorageUnavailable)


# --- settings --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ANALYTICS_BREAKER_FAILURE_THRESHOLD", "0"),
        ("ANALYTICS_BREAKER_FAILURE_THRESHOLD", "1001"),
        ("ANALYTICS_BREAKER_RESET_TIMEOUT_S", "0"),
        ("ANALYTICS_BREAKER_RESET_TIMEOUT_S", "soon"),
        ("ANALYTICS_BREAKER_DEFER_MAX_S", "0.5"),
        ("ANALYTICS_WORKER_MAX_RSS_MB", "8"),
        ("ANALYTICS_WORKER_MAX_RSS_MB", "-1"),
        ("ANALYTICS_SQLITE_BUSY_TIMEOUT_S", "0"),
        ("ANALYTICS_LOCAL_CACHE_ENTRIES", "-5"),
    ],
)
def test_out_of_range_settings_stop_the_start_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_valid_breaker_settings() -> None:
    s = Settings.from_env(
        {"ANALYTICS_BREAKER_FAILURE_THRESHOLD": "2", "ANALYTICS_BREAKER_RESET_TIMEOUT_S": "0.5",
         "ANALYTICS_WORKER_MAX_RSS_MB": "512"}
    )  # fmt: skip
    assert (s.breaker_failure_threshold, s.breaker_reset_timeout_s, s.worker_max_rss_mb) == (
        2, 0.5, 512,
    )  # fmt: skip


def test_nested_calls_on_one_thread_are_one_call_of_the_breaker() -> None:
    """A repository call inside a guarded transaction: the half-open trial is the
    transaction, and its parts are not refused as a second trial."""
    from contextlib import contextmanager

    from analytics.adapters.guarded import GuardedUnitOfWork

    class Uow:
        @contextmanager
        def atomic(self):  # type: ignore[no-untyped-def]
            yield self

    b, clock, seen = make(threshold=1, reset=1)
    b.record_failure()
    clock.t += 1
    repo = GuardedProxy(InMemoryEventRepository(), b)
    with GuardedUnitOfWork(Uow(), b).atomic():
        assert b.state is State.HALF_OPEN
        assert repo.count() == 0  # passes: part of the trial
    assert b.state is State.CLOSED and b.calls == 1
    assert seen == ["closed->open", "open->half_open", "half_open->closed"]


def test_every_actor_of_the_broker_defers_on_an_open_breaker() -> None:
    import dramatiq
    from dramatiq.brokers.stub import StubBroker

    from analytics.adapters.deferral import install

    broker = StubBroker()
    broker.declare_queue("maintenance")

    def before() -> None:
        raise StorageCircuitOpen("storage", 1)

    early = dramatiq.actor(before, broker=broker, queue_name="maintenance")
    install(broker, base_s=1, max_s=2)
    late = dramatiq.actor(lambda: before(), actor_name="late", broker=broker,
                          queue_name="maintenance")  # fmt: skip
    for actor in (early, late):
        with pytest.raises(Deferred):
            actor()
    assert install(broker, base_s=1, max_s=2) is install(broker, base_s=1, max_s=2)


def test_ingest_side_probes_skip_redis_while_the_broker_breaker_is_open() -> None:
    from analytics.adapters.guarded import GuardedBacklog, GuardedRateLimiter
    from analytics.domain.ratelimit import ALLOW_ALL

    class Probe:
        calls = 0

        def depth(self) -> int:
            Probe.calls += 1
            return 7

        def drain_rate(self) -> float:
            Probe.calls += 1
            return 2.0

        def hit(self, bucket: str, cost: int, quota: object) -> str:
            Probe.calls += 1
            return "decision"

    clock = FakeClock()
    b = CircuitBreaker("broker", failure_threshold=1, reset_timeout_s=5,
                       on_open=QueueCircuitOpen, clock=clock)  # fmt: skip
    backlog, limiter = GuardedBacklog(Probe(), b), GuardedRateLimiter(Probe(), b)
    assert (backlog.depth(), backlog.drain_rate(), limiter.hit("k", 1, None)) == (
        7,
        2.0,
        "decision",
    )
    b.record_failure()
    assert (backlog.depth(), backlog.drain_rate()) == (0, None)
    assert limiter.hit("k", 1, None) is ALLOW_ALL  # fails open, as on a Redis error
    assert Probe.calls == 3
    clock.t += 5  # cool-down over: the probes read Redis again
    assert backlog.depth() == 7 and Probe.calls == 4


def test_a_message_turned_away_during_the_trial_comes_back_soon() -> None:
    mw = DeferralMiddleware(base_s=10, max_s=60)
    msg = Msg(retries=0, deferrals=4)
    exc = Deferred(StorageCircuitOpen("storage", 0.0))  # half-open: another call is the trial
    mw.after_process_message(None, msg, exception=exc)  # type: ignore[arg-type]
    assert 2_000 <= exc.delay <= 10_000 and msg.options["deferrals"] == 4


def test_every_storage_port_method_is_a_read_or_a_write_on_purpose() -> None:
    """Reads go through ``storage_reads``, everything else through ``storage``: a method
    added to a storage port must be placed, or a write-locked database that still reads
    would let a read close the breaker its writes go through (a QA drill)."""
    import inspect  # noqa: PLC0415

    from analytics.bootstrap import STORAGE_READS  # noqa: PLC0415
    from analytics.domain.ports import AggregateStore, EventRepository  # noqa: PLC0415

    writes = {"add_many", "purge_before", "apply", "correct"}
    methods = {name for port in (EventRepository, AggregateStore)
               for name, _ in inspect.getmembers(port, inspect.isfunction) if not name.startswith("_")}  # fmt: skip
    assert STORAGE_READS | writes == methods and not STORAGE_READS & writes


def test_the_failure_that_opens_a_breaker_is_kept_without_credentials_and_forgotten_on_success() -> None:
    """A review: the cache's swallowed Redis failures reached the breaker without a text
    (the 'opened' line said error=None), an old failure outlived a success, and a URL's
    password would have gone to the log with the failure."""
    cb = CircuitBreaker("broker", failure_threshold=2, reset_timeout_s=1)
    cb.record(ConnectionError("amqp://guest:s3cret@rabbit:5672/ refused"))
    assert cb.last_error == "ConnectionError: amqp://guest:***@rabbit:5672/ refused"
    cb.record_success()
    assert cb.last_error is None
    cb.record_failure("the Redis cache failed (answered as a miss)")
    assert cb.last_error == "the Redis cache failed (answered as a miss)"
