"""Reconcile use case: recompute aggregates of a time range from the raw events, report
any drift, and repair it.

Race-free under concurrent ingest because every aggregate is an additive counter:

1. catch up: offer every raw event of the range to ``apply`` (only events that were
   stored but never counted, e.g. after a worker died between the two, get applied);
2. take a consistent snapshot of the counters and of the applied markers;
3. recompute from scratch exactly the events the snapshot says it holds;
4. the difference is the drift; repairing adds it as a correction. Events applied after
   the snapshot are in neither side, so a correction never double counts or drops them.

Ranges are processed in chunks of ``chunk`` so memory stays bounded on long ranges.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from analytics.domain.aggregation import contribution, drift, recompute
from analytics.domain.buckets import QUARTER, epoch_minute, from_minute, utc_days
from analytics.domain.events import Event
from analytics.domain.ports import AggregateStore, Cache, EventRepository


@dataclass(slots=True)
class ReconcileReport:
    start: datetime
    end: datetime
    events_scanned: int = 0
    caught_up: int = 0  # stored events that had never been counted
    drifted_counters: int = 0  # counters that differed from the recomputation
    missing_raw: int = 0  # counted events whose raw event (or marker) is gone
    #: counters of 15-minute chunks with missing raw events: the recomputation lacks those
    #: events, so a difference there is not drift; left alone, never repaired
    unverifiable_counters: int = 0
    repaired: bool = False
    examples: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "events_scanned": self.events_scanned,
            "caught_up": self.caught_up,
            "drifted_counters": self.drifted_counters,
            "missing_raw": self.missing_raw,
            "unverifiable_counters": self.unverifiable_counters,
            "repaired": self.repaired,
            "examples": self.examples,
        }


def _chunks(it: Iterator[Event], size: int) -> Iterator[list[Event]]:
    buf: list[Event] = []
    for e in it:
        buf.append(e)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def _held(events: Iterator[Event], applied: set[Any], seen: set[object]) -> Iterator[Event]:
    """The events the snapshot holds (noting which ones were found)."""
    for ev in events:
        if ev.event_id in applied:
            seen.add(ev.event_id)
            yield ev


def aligned_range(start: datetime, end: datetime) -> tuple[int, int]:
    """[start, end) widened to whole 15-minute buckets, as epoch minutes."""
    s = epoch_minute(start)
    s -= s % QUARTER
    e = epoch_minute(end - timedelta(microseconds=1)) + 1
    e = -(-e // QUARTER) * QUARTER
    return s, e


def reconcile(
    start: datetime,
    end: datetime,
    *,
    repo: EventRepository,
    aggregates: AggregateStore,
    cache: Cache | None = None,
    repair: bool = True,
    chunk: timedelta = timedelta(hours=6),
    batch: int = 1000,
) -> ReconcileReport:
    s, e = aligned_range(start, end)
    report = ReconcileReport(from_minute(s), from_minute(e))
    step = max(QUARTER, int(chunk / timedelta(minutes=1)) // QUARTER * QUARTER)
    for cs in range(s, e, step):
        ce = min(cs + step, e)
        lo, hi = from_minute(cs), from_minute(ce)
        for events in _chunks(repo.iter_range(lo, hi, page_size=batch), batch):
            report.events_scanned += len(events)
            caught = aggregates.apply([contribution(ev) for ev in events])
            report.caught_up += len(caught)
        snap = aggregates.snapshot(cs, ce)
        seen: set[object] = set()
        expected = recompute(_held(repo.iter_range(lo, hi, page_size=batch), snap.applied, seen))
        missing = len(snap.applied - seen)
        if not snap.applied and snap.counters:
            # Counters without any marker: markers were removed (they must live as long as
            # the aggregates). Nothing to recompute from: never "repair" them to zero.
            missing += 1
        report.missing_raw += missing
        deltas = drift(expected, snap.counters)
        if not deltas:
            continue
        if missing:  # retention took raw events these counters count: not drift (QA pass:
            # every purged counter was reported as drifted, crowding out the real ones)
            report.unverifiable_counters += len(deltas)
            continue
        report.drifted_counters += len(deltas)
        for k, d in list(deltas.items())[: max(0, 20 - len(report.examples))]:
            report.examples.append({**k._asdict(), "delta": d})
        if repair:
            aggregates.correct(deltas)
            report.repaired = True
    if cache is not None:
        # Every day of the range, changed in this run or not: a run whose bump failed
        # (CacheUnavailable) has committed its corrections, and its retry finds nothing
        # left to change; bumping only what it changed left the repaired buckets cached
        # stale for a day (QA). store_events.invalidate does the same, for the same reason.
        cache.bump(utc_days(from_minute(s), from_minute(e)))
    return report

