"""Worker use case: store a group of validated events, and count each exactly once.

Delivery is at least once, so this must be idempotent in effect: the repository ignores
an ``event_id`` it already holds, and the aggregate store applies an event's contribution
only if its applied-marker is absent (marker and increments commit together). Every event
of the message is offered to the aggregates, not only the new ones: an event stored by an
attempt that died before counting is counted by the redelivery. Contributions come from
the STORED version of each event, so a client retry that reuses an ``event_id`` with
different content cannot make the counts disagree with the stored event, provided the
repository's first write wins (SQLite). DynamoDB's unconditional batch writes leave a
window where two such deliveries processed at once disagree until a reconcile run
(README, "DynamoDB table design").
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from analytics.domain.aggregation import Contribution, contribution
from analytics.domain.events import Event
from analytics.domain.ports import AggregateStore, Cache, EventRepository, UnitOfWork


@dataclass(frozen=True, slots=True)
class StoreResult:
    received: int
    stored: int
    duplicates: int
    new_ids: tuple[uuid.UUID, ...] = ()
    counted: int = 0  # contributions newly applied to the aggregates
    touched: tuple[str, ...] = ()  # cache scopes of the stored versions (see invalidate)


def cache_scopes(events: Iterable[Event]) -> set[str]:
    """The cache invalidation scopes (UTC days) that these events touch."""
    return {e.timestamp.date().isoformat() for e in events}


#: Contributions worked out ahead, by ``event_id``, each with the event it was worked out
#: from: one is used only for that very event (see :func:`precount`).
Precounted = Mapping[uuid.UUID, tuple[Event, Contribution]]


def precount(events: Iterable[Event]) -> dict[uuid.UUID, tuple[Event, Contribution]]:
    """The contribution of each id's first occurrence (the version a store of these events
    keeps when the id is new), worked out before the store: outside the transaction, whose
    writer lock every worker process queues for."""
    out: dict[uuid.UUID, tuple[Event, Contribution]] = {}
    for e in events:
        if e.event_id not in out:
            out[e.event_id] = (e, contribution(e))
    return out


def store_events(
    events: Sequence[Event],
    *,
    repo: EventRepository,
    aggregates: AggregateStore | None = None,
    cache: Cache | None = None,
    uow: UnitOfWork | None = None,
    precounted: Precounted | None = None,
) -> StoreResult:
    with uow.atomic() if uow is not None else nullcontext():
        new_ids, counted, stored = _store_and_count(events, repo, aggregates, precounted or {})
    result = StoreResult(
        received=len(events),
        stored=len(new_ids),
        duplicates=len(events) - len(new_ids),
        new_ids=tuple(new_ids),
        counted=counted,
        touched=tuple(sorted(cache_scopes(stored.values()))),
    )
    invalidate(result, cache=cache)
    return result


def invalidate(result: StoreResult, *, cache: Cache | None) -> None:
    """Bump the cache scopes a store touched; after its commit, never before (a reader
    between the two would cache the old data under the new version).

    Bumped even when nothing was new: the attempt that counted may have died before it
    invalidated. CacheUnavailable propagates: the message is retried (the store is
    idempotent) until the invalidation lands.
    """
    if cache is not None and result.touched:
        cache.bump(list(result.touched))


def _store_and_count(
    events: Sequence[Event], repo: EventRepository, aggregates: AggregateStore | None,
    precounted: Precounted,
) -> tuple[list[uuid.UUID], int, dict[uuid.UUID, Event]]:
    new_ids = repo.add_many(events)
    counted = 0
    stored: dict[uuid.UUID, Event] = {}
    if aggregates is not None and events:
        ids = list(dict.fromkeys(e.event_id for e in events))
        # A new id was stored from its first occurrence here; only the others (stored by
        # an earlier message) are read back, so the common case costs no extra read.
        new = set(new_ids)
        for e in events:
            if e.event_id in new and e.event_id not in stored:
                stored[e.event_id] = e
        if len(stored) < len(ids):
            stored.update(repo.get_many(i for i in ids if i not in stored))
        counted = len(aggregates.apply([_contribution(stored[i], precounted) for i in ids if i in stored]))
    return new_ids, counted, stored


def _contribution(event: Event, precounted: Precounted) -> Contribution:
    """The stored version's contribution: worked out ahead when it is that very event
    (a new id), here when the store read it back (stored by an earlier message)."""
    ahead = precounted.get(event.event_id)
    return ahead[1] if ahead is not None and ahead[0] is event else contribution(event)


class SharedCommit:
    """Worker threads of one process share one store call, so one transaction and one
    fsync serve several messages (group commit on the worker side).

    A thread that finds no store running leads: it takes every pending group (its own
    first among them), stores them together and hands each thread its share of the
    result, then promotes the next waiting thread if more arrived meanwhile. Exactly once
    is untouched: ``store`` is idempotent per event, and the combined call commits all of
    its groups or none (each message is then retried on its own).

    ``begin`` (optional) opens the round's transaction (the UnitOfWork's ``atomic``; the
    store's own joins it). The leader opens it before it collects the round: on SQLite it
    waits there for the database's writer lock while another process commits, and the
    groups that arrive meanwhile join this round instead of the next. ``after`` (optional)
    runs once the round has committed, e.g. the cache invalidation, which must not come
    before the commit; the next leader starts meanwhile, and the round's threads hear of
    their result only when ``after`` is done (its failure fails them all, like the store's).

    ``counting`` (the store counts aggregates): each thread works out its events'
    contributions (:func:`precount`) before it queues, so the round's leader does not do
    it for everyone while it holds the writer lock every worker process waits for.
    """

    def __init__(
        self,
        store: Callable[[Sequence[Event], Precounted], StoreResult],
        *,
        max_events: int = 5000,
        begin: Callable[[], AbstractContextManager[object]] | None = None,
        after: Callable[[StoreResult], None] | None = None,
        counting: bool = False,
    ) -> None:
        self._store = store
        self._max_events = max_events
        self._begin = begin
        self._after = after
        self._counting = counting
        self._lock = threading.Lock()
        self._pending: list[_Job] = []
        # Who leads: one attribute, set in one step under the lock, so that handing the
        # lead on twice (an exception raised into the leader between the hand-over and
        # noting it) cannot make two leaders: only the leader itself hands it on.
        self._leader: _Job | None = None

    def submit(self, events: Sequence[Event]) -> StoreResult:
        job = _Job(events, precount(events) if self._counting else {})
        try:
            with self._lock:
                self._pending.append(job)
                if self._leader is None:
                    self._leader = job
            # In slices: an exception raised into this thread (dramatiq's time limit) is
            # only delivered once a wait returns; a wait without a timeout held it for as
            # long as nobody woke it.
            while not (self._leader is job or job.done):
                job.wait(self.wake_s)
            if not job.done:
                self._lead(job)
        except BaseException:
            with self._lock:
                self._abandon(job)
            raise
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    #: How often a waiting thread looks up (for an exception raised into it).
    wake_s = 1.0

    def _abandon(self, job: _Job) -> None:
        """Under the lock: a thread leaving :meth:`submit` by an exception takes its job off
        the queue, and passes the lead on if it was promoted and never led. A follower
        whose time limit fired while it waited was promoted by the round's end, raised,
        and never led: nobody led again, and every later message of the process waited
        for ever (a review). A job a leader already took is left to it: its events are
        stored with the round, and the message's retry finds them stored. A leader whose
        round ended without handing the lead on hands it on here."""
        if job in self._pending:
            self._pending.remove(job)
        self._pass_lead(job)  # if it leads

    def _take(self, batch: list[_Job]) -> None:
        """Move the round's jobs from the queue into ``batch`` (the leader's own list):
        copied first, then removed, so an exception raised into the leader in between
        leaves a job in both (the hand-over of the lead then drops it from the queue),
        never in neither (its thread would wait until its own time limit)."""
        with self._lock:
            n = count = 0
            for job in self._pending:
                if n and count + len(job.events) > self._max_events:
                    break
                n, count = n + 1, count + len(job.events)
            batch.extend(self._pending[:n])
            del self._pending[:n]

    def _lead(self, own: _Job) -> None:
        batch: list[_Job] = []
        combined: StoreResult | None = None
        error: BaseException | None = None
        after_done = False
        interrupted: BaseException | None = None
        try:
            try:
                with self._begin() if self._begin is not None else nullcontext():
                    self._take(batch)
                    ahead: dict[uuid.UUID, tuple[Event, Contribution]] = {}
                    for job in reversed(batch):  # an id's first occurrence wins, as in the store
                        ahead.update(job.precounted)
                    combined = self._store([e for job in batch for e in job.events], ahead)
            except BaseException as exc:  # noqa: BLE001 - every thread of the batch hears it
                combined, error = None, exc
                if not batch:  # ``begin`` failed: the round fails as a whole
                    self._take(batch)
            with self._lock:
                self._pass_lead(own, batch)  # the next round may start while this one ends
            if combined is not None and self._after is not None:
                try:
                    self._after(combined)
                except BaseException as exc:  # noqa: BLE001
                    combined, error = None, exc
            after_done = True
        finally:
            # Whatever raised in here (an exception raised into this thread included), the
            # lead goes on and every thread of the round hears how it ended. The ending is
            # idempotent and tried again if an exception raised into this thread cuts it
            # short (the round's other threads would wait for their own time limits); that
            # exception is raised once it is done. Nothing before the loop: an exception
            # landing there would cut the ending short too.
            for _ in range(3):
                try:
                    self._end_round(own, batch, combined if after_done else None, error)
                    break
                except BaseException as exc:  # noqa: BLE001 - finish the round first
                    interrupted = interrupted or exc
            if interrupted is not None:
                raise interrupted

    def _end_round(
        self, own: _Job, batch: list[_Job], combined: StoreResult | None, error: BaseException | None
    ) -> None:
        """Hand the lead on (if still ours) and give each job of the round its answer:
        ``error``, or its share of ``combined``, which is None when the round did not
        end (committed, maybe, but not invalidated: a success would leave the round's
        days cached stale)."""
        if combined is None and error is None:
            error = RuntimeError("the round's leader stopped before it ended")
        with self._lock:
            self._pass_lead(own, batch)
            claimed: set[uuid.UUID] = set()
            new = set(combined.new_ids) if combined is not None else set()
            for job in batch:
                if combined is None:
                    job.error = error
                else:
                    mine = {e.event_id for e in job.events if e.event_id in new} - claimed
                    claimed |= mine
                    job.result = StoreResult(
                        received=len(job.events), stored=len(mine),
                        duplicates=len(job.events) - len(mine), new_ids=tuple(mine),
                    )  # fmt: skip
                job.done = True  # last: its thread reads it without the lock
            for job in batch:
                job.wake()

    def _pass_lead(self, leader: _Job, taken: Sequence[_Job] = ()) -> None:
        """Under ``_lock``: if ``leader`` still leads, promote the next pending job, or put
        the lead down. Its thread is woken; one that misses the wake
        (an exception raised into this thread right before it) sees the lead at its next
        look. ``taken``: the leader's round, none of which may stay queued (or lead)."""
        if self._leader is not leader:
            return
        if taken and any(job in self._pending for job in taken):
            self._pending = [job for job in self._pending if job not in taken]
        self._leader = nxt = self._pending[0] if self._pending else None
        if nxt is not None:
            nxt.wake()


class _Job:
    """One thread's events and how their round ended. ``_signal`` is a bare lock held from
    creation and released (under :class:`SharedCommit`'s lock) when the job is done or
    handed the lead: a round wakes its own threads and the next leader, not every waiting
    thread (a Condition's ``notify_all`` woke all sixteen, and each took the shared lock
    again only to wait once more)."""

    __slots__ = ("_signal", "done", "error", "events", "precounted", "result")

    def __init__(self, events: Sequence[Event], precounted: Precounted) -> None:
        self.events = events
        self.precounted = precounted
        self.done = False
        self.result: StoreResult | None = None
        self.error: BaseException | None = None
        self._signal = threading.Lock()
        self._signal.acquire()

    def wait(self, timeout: float) -> None:
        self._signal.acquire(timeout=timeout)

    def wake(self) -> None:
        if self._signal.locked():  # released only under SharedCommit's lock: no race
            self._signal.release()
