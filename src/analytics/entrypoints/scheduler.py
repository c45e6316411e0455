"""``analytics scheduler`` (the seed's "beat"): APScheduler in UTC; its jobs only enqueue.

Exactly one scheduler is active: each process tries to take a Redis lease; the holder runs
the jobs and renews the lease every ``lease/3``; the others stand by and poll at the same
rate. A killed leader's lease expires after ``scheduler_lease_s``; a standby takes over
within about ``4/3 * scheduler_lease_s``. Each job run enqueues the periods it owes since
its watermark (catch-up after downtime) through a lease-fenced, per-period claim, so no
period is enqueued twice, even when two processes briefly both believe they lead.

APScheduler settings, on purpose: ``coalesce=True`` (a backlog of missed runs is one run;
the job itself enumerates the missed periods from its watermark), ``misfire_grace_time``
= half the job's period (a run that is late by less still runs; a later one is skipped and
the next run catches up), ``max_instances=1``, and every job runs once at start-up.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import structlog

from analytics.application.retention import retention_cutoff
from analytics.application.schedule import due_periods, period_bounds
from analytics.domain.clock import SystemClock
from analytics.domain.ports import Clock
from analytics.settings import Settings

log = structlog.get_logger("analytics.scheduler")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ACTOR_WAIT_S = 5.0  # how often a job whose actor no worker declares yet looks again
ACTOR_GRACE_S = 60.0  # workers starting beside the scheduler: no warning before this
FAILURE_RETRY_S = 30.0  # when a failed run (Redis unreachable, say) is tried again
STOP_GRACE_S = 10.0  # how long a stopping scheduler waits for job runs in progress
JOBS_LEFT_RUNNING = 3  # run(): stopped, but some job run did not finish within the grace
WAITING = ("queued", "retrying")  # a message waiting for a worker: its first try, or a retry
COALESCE_MIN_S = 3600  # a latest-only job waits at least this long for its last message


@dataclass(frozen=True)
class Job:
    """A periodic job: which actor (by name, on which queue) to enqueue for each period."""

    name: str
    actor: str
    queue: str
    period_s: int
    delay_s: float
    catch_up: bool
    kwargs: Callable[[datetime, datetime], dict[str, Any]]


def coalesce_limit_s(job: Job) -> int:
    """How long a latest-only job skips its periods while its last message waits: at
    least an hour, two periods for longer ones. Past it one more is sent, so a message
    that was lost (a purged queue) leaves its status "queued" without stopping the job."""
    return max(COALESCE_MIN_S, 2 * job.period_s)


def build_jobs(settings: Settings) -> list[Job]:
    """The job table (README "Operations"). Actors are named, not imported: the scheduler
    does not depend on the modules that define them."""

    def rollup(period: str) -> Callable[[datetime, datetime], dict[str, Any]]:
        return lambda start, end: {
            "period": period, "start": start.isoformat(), "end": end.isoformat(), "tz": "UTC"
        }  # fmt: skip

    def retention(start: datetime, end: datetime) -> dict[str, Any]:
        return {"cutoff": retention_cutoff(end, settings.retention_days).isoformat()}

    s = settings
    jobs = [
        Job("rollup_hourly", "generate_aggregations", "aggregations", s.schedule_hourly_s,
            s.schedule_delay_s, True, rollup("hour")),
        Job("rollup_daily", "generate_aggregations", "aggregations", s.schedule_daily_s,
            s.schedule_delay_s, True, rollup("day")),
        Job("retention", "purge_events_before", "maintenance", s.schedule_retention_s,
            0, False, retention),
        Job("dlq_depth", "check_dead_letters", "maintenance", s.schedule_dlq_check_s,
            0, False, lambda start, end: {}),
        Job("cache_warmup", "warm_dashboard_cache", "aggregations", s.schedule_warmup_s,
            0, False, lambda start, end: {}),
    ]  # fmt: skip
    wanted = s.scheduler_jobs.split(",")  # names checked at start (settings.SCHEDULER_JOBS)
    return [j for j in jobs if j.name in wanted]


def job_trigger(job: Job) -> Any:
    """Fires at every period boundary + the job's delay, in UTC (00:05, 01:05, ...)."""
    from apscheduler.triggers.interval import IntervalTrigger  # noqa: PLC0415

    return IntervalTrigger(
        seconds=job.period_s, start_date=EPOCH + timedelta(seconds=job.delay_s), timezone=UTC
    )


class SchedulerService:
    """Leader election around an APScheduler ``BackgroundScheduler`` (UTC)."""

    def __init__(
        self,
        settings: Settings,
        *,
        broker: dramatiq.Broker | None = None,
        clock: Clock | None = None,
        actor_wait_s: float = ACTOR_WAIT_S,
        actor_grace_s: float = ACTOR_GRACE_S,
        failure_retry_s: float = FAILURE_RETRY_S,
        stop_grace_s: float = STOP_GRACE_S,
    ) -> None:
        from analytics.adapters.redis_clients import redis_client  # noqa: PLC0415
        from analytics.adapters.scheduling import PeriodLedger, RedisLease  # noqa: PLC0415
        from analytics.adapters.task_status_middleware import TaskStatusMiddleware  # noqa: PLC0415
        from analytics.bootstrap import build_task_status  # noqa: PLC0415

        self.settings = settings
        self.clock = clock or SystemClock()
        self.client = redis_client(settings)
        self.broker = broker or _equipped_broker(settings, self.clock)
        owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self.lease = RedisLease(
            self.client,
            f"{settings.namespace}:scheduler:leader",
            ttl_ms=int(settings.scheduler_lease_s * 1000),
            owner=owner,
        )
        self.ledger = PeriodLedger(self.broker, self.client, settings.namespace)
        # The store the broker's task-status middleware writes (a second in-memory store
        # of the stub broker would never see a message queued: review), else our own.
        self.task_status = next(
            (m.store for m in self.broker.middleware if isinstance(m, TaskStatusMiddleware)),
            None,
        ) or build_task_status(settings)
        self._waiting: set[str] = set()  # latest-only jobs skipping: their last message waits
        self.jobs = build_jobs(settings)
        self.stop_event = threading.Event()
        self._scheduler: Any = None
        self._jobs_lock = threading.Lock()  # the scheduler's hand-over: see _run_again
        self._missing: dict[str, bool] = {}  # deferred actors: warned about yet?
        self._missing_lock = threading.Lock()
        self._born = time.monotonic()
        self.actor_wait_s = actor_wait_s
        self.actor_grace_s = actor_grace_s
        self.failure_retry_s = failure_retry_s
        self.stop_grace_s = stop_grace_s

    # --- one job run ---------------------------------------------------------------------
    def run_job(self, job: Job) -> list[int]:
        """Enqueue every period this job owes now; return the period starts enqueued."""
        from analytics.adapters.scheduling import LeaseLost  # noqa: PLC0415

        if not self._actor_deployed(job):
            return []
        now = self.clock.now()
        if not job.catch_up and self._last_not_started(job, now):
            return []
        watermark = self.ledger.watermark(job.name)
        periods = due_periods(
            now,
            period_s=job.period_s,
            delay_s=job.delay_s,
            watermark=watermark,
            max_catch_up=self.settings.schedule_catch_up_max,
            catch_up=job.catch_up,
        )
        first_owed = None if watermark is None else watermark + job.period_s
        if job.catch_up and periods and first_owed is not None and periods[0] > first_owed:
            # Past ANALYTICS_SCHEDULE_CATCH_UP_MAX: say which periods nobody will run, so
            # an operator can regenerate them (they were dropped without a word).
            log.warning(
                "periods skipped by the catch-up limit", job=job.name,
                count=(periods[0] - first_owed) // job.period_s,
                first=period_bounds(first_owed, job.period_s)[0].isoformat(),
                end=period_bounds(periods[0], job.period_s)[0].isoformat(),
                catch_up_max=self.settings.schedule_catch_up_max,
            )  # fmt: skip
        done_ttl_ms = max(60, job.period_s * (self.settings.schedule_catch_up_max + 2)) * 1000
        sent = []
        for start in periods:
            begin, end = period_bounds(start, job.period_s)
            message = dramatiq.Message(
                queue_name=job.queue,
                actor_name=job.actor,
                args=(),
                kwargs=job.kwargs(begin, end),
                options={"scheduled_job": job.name, "period_start": begin.isoformat()},
            )
            try:
                if self.ledger.enqueue_once(self.lease, job.name, start, message,
                                            done_ttl_ms=done_ttl_ms):  # fmt: skip
                    sent.append(start)
                    if not job.catch_up:
                        self.client.set(self._last_key(job), message.message_id,
                                        ex=coalesce_limit_s(job))  # fmt: skip
            except LeaseLost:
                log.warning("lease lost during job; stopping it", job=job.name)
                return sent
        if sent:
            log.info(
                "job enqueued", job=job.name, actor=job.actor, queue=job.queue,
                periods=[period_bounds(p, job.period_s)[0].isoformat() for p in sent],
            )  # fmt: skip
        return sent

    def _last_key(self, job: Job) -> str:
        return f"{self.ledger.prefix}:last:{job.name}"

    def _last_not_started(self, job: Job, now: datetime) -> bool:
        """Is this latest-only job's last message still waiting for a worker? Then its
        period is skipped: with the workers stopped, a warm-up or dead-letter check a
        minute piled up (60 an hour, all run on restart, each stale); the message that
        waits is the latest run when a worker comes (README "Scheduler")."""
        raw = self.client.get(self._last_key(job))
        status = self.task_status.get(raw.decode()) if raw is not None else None
        queued = status is not None and status.status in WAITING and status.enqueued_at is not None
        expired = queued and (now - status.enqueued_at).total_seconds() >= coalesce_limit_s(job)  # type: ignore[union-attr,operator]
        waiting = queued and not expired
        if waiting != (job.name in self._waiting):  # one line when it starts, one when it ends
            if waiting:
                self._waiting.add(job.name)
                log.warning("job skipped: its last task has not started yet", job=job.name,
                            task_id=raw.decode() if raw else None, queue=job.queue,
                            skip_for_at_most_s=coalesce_limit_s(job))  # fmt: skip
            elif expired:  # not taken: still no worker, or the message was lost (review)
                self._waiting.discard(job.name)
                log.warning("job sends again: its last task still waits after the limit",
                            job=job.name, task_id=raw.decode() if raw else None,
                            queue=job.queue, limit_s=coalesce_limit_s(job))  # fmt: skip
            else:
                self._waiting.discard(job.name)
                log.info("job runs again: its last task was taken", job=job.name)
        return waiting

    def _actor_deployed(self, job: Job) -> bool:
        """Has any worker declared this job's actor? If not, skip (its periods stay owed)."""
        from analytics.adapters.worker_registry import actors_key  # noqa: PLC0415

        deployed = self.client.sismember(actors_key(self.settings.namespace), job.actor)
        # Right after the scheduler starts (``analytics serve`` starts it beside its
        # workers) a missing actor is expected: an info line then, a warning once it is
        # still missing ``actor_grace_s`` after the start. Jobs that share an actor run
        # on separate threads of APScheduler's pool: one line each, under the lock.
        starting = time.monotonic() - self._born < self.actor_grace_s
        with self._missing_lock:
            if deployed:
                if self._missing.pop(job.actor, None) is not None:
                    log.info("a worker declares this actor now; job runs", job=job.name,
                             actor=job.actor, queue=job.queue)  # fmt: skip
                return True
            warned = self._missing.get(job.actor)
            if warned is None or (not warned and not starting):
                self._missing[job.actor] = not starting
                (log.info if starting else log.warning)(
                    "no worker declares this actor yet; job deferred", job=job.name,
                    actor=job.actor, queue=job.queue, retry_every_s=self.actor_wait_s,
                )  # fmt: skip
            return False

    def _safe_run(self, job: Job) -> None:
        try:
            self.run_job(job)
        except Exception:  # noqa: BLE001 - a failing job must not kill the scheduler
            # (Redis restarting as the daily job fires, say): again soon, not in a day.
            log.exception("job failed", job=job.name, retry_in_s=self.failure_retry_s)
            self._run_again(job, self.failure_retry_s, "after a failure")
            return
        if job.actor in self._missing:
            self._run_again(job, self.actor_wait_s, "deferred: no worker yet")
            return  # nothing ran: /health/detailed must not call the scheduler current (QA)
        self._record_run()

    def _run_again(self, job: Job, delay_s: float, why: str) -> None:
        """Run ``job`` once more in ``delay_s``, not only at its next period (an hour, or a
        day for the daily rollup and retention): a job whose actor no worker declares yet
        (``analytics serve`` starts its workers beside the scheduler) enqueues what it owes
        within seconds of one declaring it, and a failed run is tried again. One such run
        per job at a time; the periods it owes come from its watermark, as always."""
        # Under the lock _stop_jobs takes before APScheduler's shutdown: that shutdown
        # holds APScheduler's job-store lock while it waits for the running jobs, and a
        # run that failed as it began (Redis gone with a killed serve) then waited for
        # that lock in add_job: the scheduler hung on its SIGTERM for good (CI).
        with self._jobs_lock:
            scheduler = self._scheduler
            if scheduler is None:  # standing by, or stopping: the next leader runs it
                return
            scheduler.add_job(
                self._safe_run, "date", run_date=datetime.now(UTC) + timedelta(seconds=delay_s),
                args=(job,), id=f"{job.name}:again", name=f"{job.name} ({why})",
                replace_existing=True, misfire_grace_time=None,
            )  # fmt: skip

    def _seen(self) -> None:
        """``<ns>:scheduler:leader_seen``: /health/detailed tells a failover (a standby
        takes the lease within lease x 4/3 of this) from every scheduler stopped."""
        self._probe.record_scheduler_seen()

    @functools.cached_property
    def _probe(self) -> Any:
        from analytics.adapters.redis_probe import RedisProbe  # noqa: PLC0415

        return RedisProbe(self.client, self.settings.namespace)

    def _record_run(self) -> None:
        """``<ns>:scheduler:last_run`` for /health/detailed (README, "Observability")."""
        try:
            self._probe.record_scheduler_run(self.clock.now())
        except Exception as exc:  # noqa: BLE001 - health bookkeeping must not fail a job
            log.warning("could not record the scheduler run", error=str(exc))

    # --- leadership ----------------------------------------------------------------------
    def _start_jobs(self) -> None:
        scheduler = _stoppable_scheduler()
        now = datetime.now(UTC)
        for job in self.jobs:
            scheduler.add_job(
                self._safe_run,
                job_trigger(job),
                args=(job,),
                id=job.name,
                name=job.name,
                replace_existing=True,
                coalesce=True,
                misfire_grace_time=max(1, job.period_s // 2),
                max_instances=1,
            )
            # Catch up from the watermark right away, once; the interval job above stays
            # aligned to period boundaries + delay (an immediate first run would shift it).
            scheduler.add_job(
                self._safe_run, "date", run_date=now, args=(job,), id=f"{job.name}:startup",
                name=f"{job.name} (start-up catch-up)", replace_existing=True,
                misfire_grace_time=None,
            )  # fmt: skip
        # Known before it starts: a start-up run may already want to schedule its next try.
        self._scheduler = scheduler
        scheduler.start()

    def _stop_jobs(self, wait: bool) -> None:
        with self._jobs_lock:  # from here on _run_again adds nothing (see there)
            scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.shutdown(wait=wait)

    @property
    def active(self) -> bool:
        return self._scheduler is not None

    def step(self) -> None:
        """One election round: take the lease, or renew it, or notice it is gone."""
        import redis  # noqa: PLC0415

        try:
            if not self.active:
                if self.lease.acquire():
                    log.info("scheduler active", owner=self.lease.owner)
                    self._seen()
                    self._start_jobs()
            elif not self.lease.renew():
                log.warning("scheduler lease lost; standing by", owner=self.lease.owner)
                self._stop_jobs(wait=False)
            else:
                self._seen()
        except redis.RedisError as exc:
            log.warning("redis unreachable", error=str(exc))
            if self.active:  # cannot renew: assume the lease will lapse
                self._stop_jobs(wait=False)

    def run(self) -> int:
        interval = self.settings.scheduler_lease_s / 3
        log.info("scheduler standing by", owner=self.lease.owner,
                 lease_s=self.settings.scheduler_lease_s)  # fmt: skip
        try:
            while not self.stop_event.is_set():
                self.step()
                self.stop_event.wait(interval)
        finally:
            log.info("scheduler stopping", owner=self.lease.owner)
            stopped = self._stop_jobs_within(self.stop_grace_s)
            try:
                if self.lease.release():
                    log.info("scheduler lease released", owner=self.lease.owner)
            except Exception:  # noqa: BLE001 - the lease expires by itself
                log.warning("scheduler lease not released; it expires by itself")
        return 0 if stopped else JOBS_LEFT_RUNNING

    def _stop_jobs_within(self, grace_s: float) -> bool:
        """Stop the jobs, waiting at most ``grace_s`` for runs in progress; False when some
        still run then. Cutting one is safe: every period it owes is claimed under the
        lease and from its watermark, so the next leader enqueues what it did not."""
        if self._scheduler is None:
            return True
        stopper = threading.Thread(target=self._stop_jobs, args=(True,), daemon=True)
        stopper.start()
        stopper.join(grace_s)
        if stopper.is_alive():
            log.warning("scheduler jobs still running; leaving them to the next leader",
                        grace_s=grace_s)  # fmt: skip
            return False
        return True


def _stoppable_scheduler() -> Any:
    """APScheduler's ``BackgroundScheduler`` (UTC), without its race at shutdown.

    Its loop submits a one-off (``date``) job and then removes it; a shutdown begun in
    between marks the scheduler stopped first, and ``remove_job`` of a stopped scheduler
    looks only among jobs not yet added: ``JobLookupError`` ended APScheduler's thread
    with a traceback in the log on an ordinary stop (its job store is emptied anyway).
    """
    from apscheduler.jobstores.base import JobLookupError  # noqa: PLC0415
    from apscheduler.schedulers.background import BackgroundScheduler  # noqa: PLC0415
    from apscheduler.schedulers.base import STATE_STOPPED  # noqa: PLC0415

    class Scheduler(BackgroundScheduler):  # type: ignore[misc]
        def remove_job(self, job_id: str, jobstore: str | None = None) -> None:
            try:
                super().remove_job(job_id, jobstore)
            except JobLookupError:
                if self.state != STATE_STOPPED:
                    raise

    return Scheduler(timezone=UTC)


def _equipped_broker(settings: Settings, clock: Clock) -> dramatiq.Broker:
    """The broker with the task-status middleware, so scheduled tasks get a status too."""
    from analytics.adapters.dramatiq_queue import build_broker  # noqa: PLC0415
    from analytics.adapters.task_status_middleware import (  # noqa: PLC0415
        TaskStatusMiddleware,
        install,
    )
    from analytics.bootstrap import build_task_status  # noqa: PLC0415

    broker = build_broker(settings)
    install(broker, TaskStatusMiddleware(build_task_status(settings), clock))
    return broker


def run_scheduler(settings: Settings) -> int:
    from analytics.entrypoints.logs import configure_logging  # noqa: PLC0415

    configure_logging(settings.log_level, settings.log_format)
    if settings.log_level != "DEBUG":
        # APScheduler says at INFO that it added, ran and finished each job (four lines a
        # minute, ten at start); "job enqueued" above says what a run did. Its warnings
        # (a missed run time, a job that raised) still come through.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
    service = SchedulerService(settings)

    def stop(signum: int, frame: object) -> None:
        service.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = service.run()
    if code == JOBS_LEFT_RUNNING:
        # APScheduler's pool threads are not daemons: the interpreter's exit would join
        # them, however long they hang. Asked to stop, so exit now (status 0).
        logging.shutdown()
        os._exit(0)
    log.info("scheduler stopped")
    return code
