"""Scheduler pieces on a real Redis: the lease (CAS renew/release), the fenced per-period
ledger, and a job run catching up from its watermark after downtime."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from analytics.adapters.scheduling import LeaseLost, RedisLease
from analytics.domain.clock import FixedClock
from analytics.entrypoints.scheduler import SchedulerService
from analytics.settings import Settings
from tests.support import wait_until

pytestmark = pytest.mark.integration
T0 = datetime(2026, 3, 1, 10, 7, tzinfo=UTC)


ACTORS = ("generate_aggregations", "purge_events_before", "check_dead_letters")


@pytest.fixture
def settings(redis_server: Any, namespace: str) -> Settings:
    redis_server.client().sadd(f"{namespace}:ops:actors", *ACTORS)  # as workers record them
    return Settings.from_env({**redis_server.env(namespace), "ANALYTICS_SCHEDULER_LEASE_S": "5"})


def test_lease_is_exclusive_and_only_its_owner_renews_or_releases(redis_server, namespace) -> None:  # type: ignore[no-untyped-def]
    client = redis_server.client()
    a = RedisLease(client, f"{namespace}:lease", ttl_ms=5000, owner="a")
    b = RedisLease(client, f"{namespace}:lease", ttl_ms=5000, owner="b")
    assert a.acquire() and not b.acquire()
    assert a.renew() and not b.renew()
    assert not b.release() and a.holder() == "a"
    assert a.release() and a.holder() is None
    assert b.acquire() and not a.renew()  # a lost it: renewing must not steal it back


def test_lease_expires_when_not_renewed(redis_server, namespace) -> None:  # type: ignore[no-untyped-def]
    client = redis_server.client()
    a = RedisLease(client, f"{namespace}:lease", ttl_ms=50, owner="a")
    assert a.acquire()
    assert client.pttl(f"{namespace}:lease") <= 50
    b = RedisLease(client, f"{namespace}:lease", ttl_ms=5000, owner="b")
    import time

    time.sleep(0.1)
    assert b.acquire()


def _hourly(client: Any, ns: str) -> list[str]:
    out = []
    for raw in client.hvals(f"{ns}:aggregations.msgs"):
        m = json.loads(raw)
        if m["kwargs"].get("period") == "hour":
            out.append(m["kwargs"]["start"])
    return sorted(out)


def test_job_catches_up_from_its_watermark_once_per_period(
    settings, redis_server, namespace
) -> None:  # type: ignore[no-untyped-def]
    client = redis_server.client()
    clock = FixedClock(T0)
    service = SchedulerService(settings, clock=clock)
    hourly = next(j for j in service.jobs if j.name == "rollup_hourly")
    assert service.lease.acquire()

    assert len(service.run_job(hourly)) == 1  # first run: only the last closed hour (09:00)
    clock.advance(timedelta(hours=5))  # downtime
    assert len(service.run_job(hourly)) == 5  # 10:00 .. 14:00 caught up
    assert service.run_job(hourly) == []  # nothing new: nothing enqueued
    starts = _hourly(client, namespace)
    assert [datetime.fromisoformat(s).hour for s in starts] == [9, 10, 11, 12, 13, 14]
    # Each scheduled task has a status record, as if the API had enqueued it.
    from analytics.bootstrap import build_task_status

    ids = [json.loads(raw)["message_id"] for raw in client.hvals(f"{namespace}:aggregations.msgs")]
    statuses = [build_task_status(settings).get(i) for i in ids]
    assert all(st is not None and st.status == "queued" for st in statuses)
    assert client.llen(f"{namespace}:aggregations") == 6

    # Another process that does not hold the lease cannot enqueue (fenced), even if it
    # believes it leads; the periods stay exactly once.
    other = SchedulerService(settings, clock=FixedClock(T0 + timedelta(hours=9)))
    with pytest.raises(LeaseLost):
        other.ledger.enqueue_once(other.lease, "rollup_hourly", 0, _msg(), done_ttl_ms=60_000)
    assert other.run_job(hourly) == []
    assert len(_hourly(client, namespace)) == 6


def test_periods_past_the_catch_up_limit_are_named_in_a_warning(
    settings, redis_server, namespace, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """They were dropped without a word: an operator could not tell what to regenerate."""
    import structlog  # noqa: PLC0415

    from analytics.entrypoints import scheduler as scheduler_module  # noqa: PLC0415

    captured = structlog.testing.CapturingLogger()
    monkeypatch.setattr(scheduler_module, "log", captured)
    clock = FixedClock(T0)
    service = SchedulerService(settings.model_copy(update={"schedule_catch_up_max": 2}),
                               clock=clock)  # fmt: skip
    hourly = next(j for j in service.jobs if j.name == "rollup_hourly")
    assert service.lease.acquire()
    assert len(service.run_job(hourly)) == 1  # 09:00
    clock.advance(timedelta(hours=5))
    assert len(service.run_job(hourly)) == 2  # 13:00 and 14:00; 10:00 .. 12:00 never run
    (warning,) = [c for c in captured.calls if c.method_name == "warning"]
    assert warning.args == ("periods skipped by the catch-up limit",)
    assert warning.kwargs["count"] == 3
    assert datetime.fromisoformat(warning.kwargs["first"]).hour == 10
    assert datetime.fromisoformat(warning.kwargs["end"]).hour == 13


def test_retention_job_enqueues_the_cutoff_for_the_maintenance_worker(
    settings, redis_server, namespace
) -> None:  # type: ignore[no-untyped-def]
    client = redis_server.client()
    service = SchedulerService(settings, clock=FixedClock(T0))
    assert service.lease.acquire()
    job = next(j for j in service.jobs if j.name == "retention")
    assert len(service.run_job(job)) == 1
    (raw,) = client.hvals(f"{namespace}:maintenance.msgs")
    msg = json.loads(raw)
    assert msg["actor_name"] == "purge_events_before"
    assert msg["kwargs"] == {"cutoff": "2025-12-01T00:00:00+00:00"}  # 90 days, whole UTC day


def _msg() -> Any:
    import dramatiq

    return dramatiq.Message(queue_name="aggregations", actor_name="generate_aggregations",
                            args=(), kwargs={}, options={})  # fmt: skip


def test_a_job_whose_actor_no_worker_declares_waits_and_then_catches_up(
    redis_server, namespace
) -> None:  # type: ignore[no-untyped-def]
    client = redis_server.client()
    settings = Settings.from_env(redis_server.env(namespace))
    clock = FixedClock(T0)
    service = SchedulerService(settings, clock=clock)
    assert service.lease.acquire()
    hourly = next(j for j in service.jobs if j.name == "rollup_hourly")
    assert service.run_job(hourly) == []  # no worker has generate_aggregations yet
    clock.advance(timedelta(hours=2))
    assert service.run_job(hourly) == []
    assert client.llen(f"{namespace}:aggregations") == 0
    # First run enqueues the last closed hour only (no watermark yet), then keeps up.
    client.sadd(f"{namespace}:ops:actors", "generate_aggregations")
    assert len(service.run_job(hourly)) == 1


def test_a_deferred_run_is_not_recorded_as_the_schedulers_last_run(
    redis_server, namespace
) -> None:  # type: ignore[no-untyped-def]
    """Ops drill: with every job deferred (no worker declares its actor) for over a minute,
    /health/detailed said the scheduler was ok, its last run seconds old."""
    client = redis_server.client()
    service = SchedulerService(Settings.from_env(redis_server.env(namespace)), clock=FixedClock(T0))
    assert service.lease.acquire()
    hourly = next(j for j in service.jobs if j.name == "rollup_hourly")
    last_run = f"{namespace}:scheduler:last_run"
    service._safe_run(hourly)  # noqa: SLF001
    assert not client.exists(last_run)
    client.sadd(f"{namespace}:ops:actors", "generate_aggregations")
    service._safe_run(hourly)  # noqa: SLF001
    assert client.exists(last_run)


def test_a_missing_actor_is_news_at_start_and_a_warning_once_it_stays_missing(
    redis_server, namespace
) -> None:  # type: ignore[no-untyped-def]
    """``analytics serve`` starts the scheduler beside its workers: its first runs find no
    worker yet every time, which is no reason for a warning (a new user read four of them
    at every start as a fault). Still missing after the grace: one warning."""
    import structlog  # noqa: PLC0415

    settings = Settings.from_env(redis_server.env(namespace))
    starting = SchedulerService(settings, clock=FixedClock(T0), actor_grace_s=3600)
    late = SchedulerService(settings, clock=FixedClock(T0), actor_grace_s=0)
    hourly = next(j for j in starting.jobs if j.name == "rollup_hourly")

    def deferrals(service: SchedulerService) -> list[str]:
        with structlog.testing.capture_logs() as logged:
            assert not service._actor_deployed(hourly)  # noqa: SLF001
        return [e["log_level"] for e in logged if e["event"].startswith("no worker declares")]

    assert deferrals(starting) == ["info"]  # starting: news, once
    assert deferrals(starting) == []
    starting.actor_grace_s = 0  # the grace is over, the actor still missing
    assert deferrals(starting) == ["warning"]
    assert deferrals(starting) == []  # once
    assert deferrals(late) == ["warning"]  # missing long after the start: a warning at once
    default = SchedulerService(settings, clock=FixedClock(T0))  # the grace a start gets
    assert deferrals(default) == ["info"]
    redis_server.client().sadd(f"{namespace}:ops:actors", hourly.actor)  # a worker boots
    with structlog.testing.capture_logs() as logged:
        assert default._actor_deployed(hourly)  # noqa: SLF001
    assert [e["event"] for e in logged] == ["a worker declares this actor now; job runs"]


def test_a_deferred_job_runs_within_seconds_of_a_worker_declaring_its_actor(
    redis_server, namespace
) -> None:  # type: ignore[no-untyped-def]
    """``analytics serve`` starts the scheduler beside its workers, so the start-up run
    finds no worker yet: the job looks again every ``actor_wait_s`` instead of waiting
    for its next period (an hour here, a day for the daily rollup and retention)."""
    client = redis_server.client()
    settings = Settings.from_env(
        {**redis_server.env(namespace), "ANALYTICS_SCHEDULER_JOBS": "rollup_hourly"}
    )
    service = SchedulerService(settings, actor_wait_s=0.2)
    assert service.lease.acquire()
    service._start_jobs()  # noqa: SLF001 - what winning the election does
    try:
        wait_until(lambda: "generate_aggregations" in service._missing, timeout=10)  # noqa: SLF001
        assert _hourly(client, namespace) == []  # deferred: nothing enqueued
        client.sadd(f"{namespace}:ops:actors", "generate_aggregations")  # a worker boots
        wait_until(lambda: len(_hourly(client, namespace)) == 1, timeout=10,
                   message="the owed hour was not enqueued after the worker appeared")  # fmt: skip
        assert not service._missing  # noqa: SLF001
        scheduled = {job.id for job in service._scheduler.get_jobs()}  # noqa: SLF001
        assert "rollup_hourly:again" not in scheduled  # no more retries once it ran
    finally:
        service._stop_jobs(wait=True)  # noqa: SLF001


def test_a_failed_run_is_tried_again_soon_not_at_the_next_period(
    redis_server, namespace, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """A daily job whose run fails (Redis restarting as it fires, say) would otherwise
    wait a whole day; it runs again after ``failure_retry_s`` and enqueues what it owes.

    The start-up run fires as the scheduler starts, so this one fails while the thread
    that started it is still inside ``start()`` (held there on purpose: on a busy machine
    it was, and the retry was lost because the service did not know its scheduler yet)."""
    import time  # noqa: PLC0415

    from apscheduler.schedulers.background import BackgroundScheduler  # noqa: PLC0415

    start = BackgroundScheduler.start

    def slow_start(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        start(self, *args, **kwargs)
        time.sleep(0.5)

    monkeypatch.setattr(BackgroundScheduler, "start", slow_start)

    client = redis_server.client()
    client.sadd(f"{namespace}:ops:actors", "generate_aggregations")
    settings = Settings.from_env(
        {**redis_server.env(namespace), "ANALYTICS_SCHEDULER_JOBS": "rollup_hourly"}
    )
    service = SchedulerService(settings, failure_retry_s=0.2)
    run_job, calls = service.run_job, []

    def failing_once(job):  # type: ignore[no-untyped-def]
        calls.append(job.name)
        if len(calls) == 1:
            raise ConnectionError("Redis is restarting")
        return run_job(job)

    service.run_job = failing_once  # type: ignore[method-assign]
    assert service.lease.acquire()
    service._start_jobs()  # noqa: SLF001 - what winning the election does
    try:
        wait_until(lambda: len(_hourly(client, namespace)) == 1, timeout=10,
                   message="the failed start-up run was not tried again")  # fmt: skip
        assert len(calls) >= 2  # the failed run and its retry
    finally:
        service._stop_jobs(wait=True)  # noqa: SLF001


def test_a_stopping_scheduler_waits_for_a_hung_job_only_its_grace(settings) -> None:  # type: ignore[no-untyped-def]
    """A job run stuck in a call (a Redis that went away as the scheduler was told to
    stop) held the scheduler's exit for as long as it hung (CI: serve killed outright,
    its scheduler still alive a minute later). The stop waits ``stop_grace_s``, releases
    the lease and says the jobs were left."""
    import threading  # noqa: PLC0415

    service = SchedulerService(settings.model_copy(update={"scheduler_jobs": "rollup_hourly"}),
                               stop_grace_s=0.2)  # fmt: skip
    hung, release = threading.Event(), threading.Event()

    def hanging(job):  # type: ignore[no-untyped-def]
        hung.set()
        release.wait(60)
        return []

    service.run_job = hanging  # type: ignore[method-assign]
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(service.run()), daemon=True)
    runner.start()
    try:
        assert hung.wait(30), "the start-up run never started"
        service.stop_event.set()
        runner.join(30)
        assert result == [3]  # JOBS_LEFT_RUNNING: stopped without waiting out the job
        assert service.lease.acquire()  # the lease was released on the way out
    finally:
        release.set()


def test_a_one_off_run_removed_after_the_stop_began_ends_no_thread() -> None:
    """APScheduler's loop submits a one-off run, then removes it; a stop begun in between
    made ``remove_job`` raise JobLookupError, which ended APScheduler's thread with a
    traceback in the log (seen as PytestUnhandledThreadExceptionWarning in a busy run)."""
    from apscheduler.jobstores.base import JobLookupError  # noqa: PLC0415
    from apscheduler.schedulers.background import BackgroundScheduler  # noqa: PLC0415

    from analytics.entrypoints.scheduler import _stoppable_scheduler  # noqa: PLC0415

    plain, ours = BackgroundScheduler(), _stoppable_scheduler()
    for scheduler in (plain, ours):
        scheduler.start(paused=True)
        scheduler.add_job(print, "date", id="rollup_hourly:startup")
        scheduler.shutdown()  # stopped: its store emptied
    with pytest.raises(JobLookupError):  # what APScheduler's thread died of
        plain.remove_job("rollup_hourly:startup")
    ours.remove_job("rollup_hourly:startup")  # the stop already removed it: nothing to do
    running = _stoppable_scheduler()
    running.start(paused=True)
    try:
        with pytest.raises(JobLookupError):  # while running, a wrong id is still an error
            running.remove_job("no-such-job")
    finally:
        running.shutdown()


def test_a_run_that_fails_as_the_scheduler_stops_does_not_hang_the_stop(settings) -> None:  # type: ignore[no-untyped-def]
    """APScheduler's shutdown holds its job-store lock while it waits for running jobs; a
    run that failed just then asked for a retry through ``add_job``, which waits for that
    lock: the scheduler hung on SIGTERM for good (CI: alive 35 minutes after serve was
    killed). The stop now finishes and reports every job done (0, not 3)."""
    import threading  # noqa: PLC0415

    from apscheduler.schedulers.base import STATE_STOPPED  # noqa: PLC0415

    service = SchedulerService(settings.model_copy(update={"scheduler_jobs": "rollup_hourly"}),
                               failure_retry_s=60, stop_grace_s=20)  # fmt: skip
    began, stopping = threading.Event(), threading.Event()
    holder: list[object] = []

    def failing_at_the_stop(job):  # type: ignore[no-untyped-def]
        holder.append(service._scheduler)  # noqa: SLF001
        began.set()
        stopping.wait(30)
        scheduler = holder[0]
        for _ in range(300):  # until the shutdown has begun (it then holds its lock)
            if scheduler.state == STATE_STOPPED:  # type: ignore[attr-defined]
                break
            threading.Event().wait(0.01)
        raise ConnectionError("Redis went away with serve")

    service.run_job = failing_at_the_stop  # type: ignore[method-assign]
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(service.run()), daemon=True)
    runner.start()
    assert began.wait(30), "the start-up run never started"
    service.stop_event.set()
    stopping.set()
    runner.join(60)
    assert result == [0], result  # 3: the stop gave up on a hung job (the deadlock)


def test_a_period_whose_send_failed_on_another_broker_is_sent_by_the_retry(settings) -> None:  # type: ignore[no-untyped-def]
    """RabbitMQ's path: the period is claimed in Redis, then sent. A failed send (a reset
    connection, a confirm timeout) left it marked done with the watermark past it: the
    retry and every later run skipped it, and that period's reconcile never ran (a
    review). The claim is undone, so the retry sends it."""
    from dramatiq.brokers.stub import StubBroker  # noqa: PLC0415

    class FlakyBroker(StubBroker):  # as RabbitmqBroker: not a RedisBroker
        fails, sent = 1, []

        def enqueue(self, message, *, delay=None):  # type: ignore[no-untyped-def]
            if self.fails:
                self.fails -= 1
                raise ConnectionError("AMQP connection reset")
            self.sent.append(message.kwargs["start"])
            return message

    broker = FlakyBroker()
    service = SchedulerService(settings, broker=broker, clock=FixedClock(T0))
    hourly = next(j for j in service.jobs if j.name == "rollup_hourly")
    assert service.lease.acquire()
    watermark = service.ledger.watermark(hourly.name)
    with pytest.raises(ConnectionError):
        service.run_job(hourly)
    assert service.ledger.watermark(hourly.name) == watermark  # the claim undone
    assert len(service.run_job(hourly)) == 1  # what the retry 30 s later does
    assert broker.sent == ["2026-03-01T09:00:00+00:00"]
    assert service.run_job(hourly) == []  # and once only


def test_a_period_at_or_before_the_watermark_is_never_claimed_again(
    settings, redis_server, namespace
) -> None:  # type: ignore[no-untyped-def]
    """Mutation QA: a period's done key expires (``done_ttl_ms``), the watermark does not.
    Only the watermark check in the claim script keeps an expired period (or any earlier
    one) from being claimed again: without it a late or repeated run enqueued that hour's
    rollup a second time and moved the watermark back, so every period after it was owed
    (and enqueued) again."""
    client = redis_server.client()
    service = SchedulerService(settings, clock=FixedClock(T0))
    assert service.lease.acquire()
    ledger, lease = service.ledger, service.lease
    hour = 3600
    assert ledger.enqueue_once(lease, "rollup_hourly", 2 * hour, _msg(), done_ttl_ms=1)
    done = f"{namespace}:scheduler:done:rollup_hourly:{2 * hour}"
    wait_until(lambda: not client.exists(done), timeout=5, message="the done key never expired")
    assert not ledger.enqueue_once(lease, "rollup_hourly", 2 * hour, _msg(), done_ttl_ms=60_000)
    assert not ledger.enqueue_once(lease, "rollup_hourly", hour, _msg(), done_ttl_ms=60_000)
    assert ledger.watermark("rollup_hourly") == 2 * hour  # never moved back
    assert client.llen(f"{namespace}:aggregations") == 1  # enqueued once


def test_a_latest_only_job_skips_its_periods_while_its_last_task_waits(
    settings, redis_server, namespace, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """With the workers stopped a warm-up a minute piled up (60 an hour, each run, stale,
    on restart): while the last one has not been taken, no other is sent; one line when
    the skipping starts and one when it ends; past the limit one more is sent (a lost
    message must not stop the job for good); catch-up jobs still send every period."""
    import structlog  # noqa: PLC0415

    from analytics.domain import tasks  # noqa: PLC0415
    from analytics.entrypoints import scheduler as scheduler_module  # noqa: PLC0415

    captured = structlog.testing.CapturingLogger()
    monkeypatch.setattr(scheduler_module, "log", captured)
    client = redis_server.client()
    client.sadd(f"{namespace}:ops:actors", "warm_dashboard_cache")
    clock = FixedClock(T0)
    service = SchedulerService(settings, clock=clock)
    assert service.lease.acquire()
    warmup = next(j for j in service.jobs if j.name == "cache_warmup")
    hourly = next(j for j in service.jobs if j.name == "rollup_hourly")

    def warmups() -> list[str]:
        return [m["message_id"] for m in map(json.loads, client.hvals(f"{namespace}:aggregations.msgs"))
                if m["actor_name"] == "warm_dashboard_cache"]  # fmt: skip

    assert len(service.run_job(warmup)) == 1
    (first,) = warmups()
    assert len(service.run_job(hourly)) == 1
    for _ in range(30):  # half an hour without a worker
        clock.advance(timedelta(minutes=1))
        assert service.run_job(warmup) == []
    assert warmups() == [first]
    skipped = [c for c in captured.calls if c.args == ("job skipped: its last task has not started yet",)]
    assert len(skipped) == 1 and skipped[0].kwargs["task_id"] == first

    # A worker takes it: the next period is sent, and the skipping is over (one line).
    service.task_status.apply(tasks.running(first, actor="warm_dashboard_cache", queue="aggregations",
                                            at=clock.now(), retries=0, enqueued_at=T0))  # fmt: skip
    clock.advance(timedelta(minutes=1))
    assert len(service.run_job(warmup)) == 1
    assert [c.args for c in captured.calls if c.method_name == "info"].count(
        ("job runs again: its last task was taken",)) == 1  # fmt: skip
    second = (set(warmups()) - {first}).pop()

    # Waiting past the limit (an hour for a one-minute job): one more, said as such (not
    # "taken": review), then skipping again.
    clock.advance(timedelta(seconds=scheduler_module.coalesce_limit_s(warmup) - 60))
    assert service.run_job(warmup) == []
    clock.advance(timedelta(minutes=1))
    assert len(service.run_job(warmup)) == 1
    assert captured.calls[-2].args == ("job sends again: its last task still waits after the limit",)
    assert len(warmups()) == 3 and second in warmups()
    clock.advance(timedelta(minutes=1))
    assert service.run_job(warmup) == []
    assert len(service.run_job(hourly)) == 1  # 10:00, though 09:00 waits: owed periods are sent


def test_the_active_scheduler_notes_each_renewal_for_the_health_report(settings, redis_server, namespace) -> None:  # type: ignore[no-untyped-def]
    """/health/detailed tells a handover from every scheduler stopped by this time."""
    from analytics.adapters.redis_probe import RedisProbe

    probe = RedisProbe(redis_server.client(), namespace)
    service = SchedulerService(settings, clock=FixedClock(T0))
    standby = SchedulerService(settings, clock=FixedClock(T0))
    try:
        service.step()  # takes the lease
        assert service.active and probe.scheduler_seen() is not None
        probe.client.delete(probe.scheduler_seen_key)
        standby.step()  # a standby renews nothing
        assert not standby.active and probe.scheduler_seen() is None
        service.step()  # renews
        first = probe.scheduler_seen()
        assert first is not None and abs(first - time.time()) < 60
    finally:
        service._stop_jobs(wait=True)
