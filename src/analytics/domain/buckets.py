"""Time buckets: UTC base buckets, and period buckets at local boundaries in any IANA zone.

Storage keeps two UTC base granularities: 1-minute and 15-minute buckets, named by their
start as whole minutes since the Unix epoch. Every UTC offset in use since 1972 is a
multiple of 15 minutes, so an hour, a day, an ISO week or a month in any zone starts and
ends on a 15-minute boundary and is the exact union of 15-minute base buckets; any window
resolved to the minute is the union of at most 14 + 14 minute buckets around them.

Period boundaries are local midnights (day, week starting Monday, month) or local hour
starts, computed with :mod:`zoneinfo`: a DST day lasts 23 or 25 hours, and a midnight that
does not exist starts the day at its first instant.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from analytics.domain.errors import BadQuery

MINUTE = 1  # grain of the fine base buckets, in minutes
QUARTER = 15  # grain of the coarse base buckets, in minutes
GRAINS = (MINUTE, QUARTER)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Period(StrEnum):
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


#: What a range too long for its period can ask for instead.
_COARSER = {Period.HOUR: "day, week or month", Period.DAY: "week or month", Period.WEEK: "month"}


def parse_period(value: str) -> Period:
    try:
        return Period(value)
    except ValueError:
        raise BadQuery(
            "period", f"unknown period {value!r}; choose from hour, day, week, month"
        ) from None


#: Files of a zoneinfo database that are not zones: ``localtime`` answered in the host's
#: own zone (and echoed that name), ``Factory`` in a zone named "-00".
_NOT_ZONES = frozenset({"localtime", "Factory", "posixrules"})


def parse_tz(value: str) -> ZoneInfo:
    """An IANA zone name (``Europe/Berlin``, ``UTC``); anything else is a bad ``tz``."""
    if (
        not value
        or len(value) > 64
        or value.startswith(("/", ".", "posix/", "right/"))
        or ".." in value
        or value in _NOT_ZONES
    ):
        raise BadQuery("tz", f"unknown time zone {value!r}; use an IANA name like Europe/Berlin")
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise BadQuery(
            "tz", f"unknown time zone {value!r}; use an IANA name like Europe/Berlin"
        ) from None


def epoch_minute(dt: datetime) -> int:
    """Whole minutes since the epoch of the minute that contains ``dt`` (tz-aware)."""
    return (dt - _EPOCH) // timedelta(minutes=1)


def from_minute(minute: int) -> datetime:
    return _EPOCH + timedelta(minutes=minute)


def utc_days(start: datetime, end: datetime) -> list[str]:
    """The UTC days (``YYYY-MM-DD``) that [start, end) touches: the cache's version scopes."""
    day, last = start.date(), (end - timedelta(microseconds=1)).date()
    days = []
    while day <= last:
        days.append(day.isoformat())
        day += timedelta(days=1)
    return days


def bucket_of(minute: int, grain: int) -> int:
    return minute - minute % grain


# --- covers: which base buckets make up a minute-resolved span ------------------------


@dataclass(frozen=True, slots=True, order=True)
class Piece:
    """Base buckets of one grain whose starts lie in [start, end) (epoch minutes)."""

    grain: int
    start: int
    end: int


def cover(start: int, end: int) -> tuple[Piece, ...]:
    """The fewest base-bucket ranges whose union is exactly minutes [start, end).

    15-minute buckets for the aligned middle, minute buckets for the ragged edges.
    """
    if end <= start:
        return ()
    q_start = -(-start // QUARTER) * QUARTER
    q_end = end - end % QUARTER
    if q_start >= q_end:
        return (Piece(MINUTE, start, end),)
    pieces = []
    if start < q_start:
        pieces.append(Piece(MINUTE, start, q_start))
    pieces.append(Piece(QUARTER, q_start, q_end))
    if q_end < end:
        pieces.append(Piece(MINUTE, q_end, end))
    return tuple(pieces)


# --- period buckets in a zone ---------------------------------------------------------


def _local_midnight(d: date, tz: tzinfo) -> datetime:
    """The first instant of local date ``d`` (fold=0 is the earlier instant, and for a
    skipped midnight zoneinfo applies the offset before the gap: the day's first instant)."""
    return datetime(d.year, d.month, d.day, tzinfo=tz).astimezone(UTC)


def _offset_change(lo: datetime, hi: datetime, tz: tzinfo) -> datetime | None:
    """The instant in (lo, hi] from which ``tz`` has ``hi``'s UTC offset, when ``lo``'s
    differs (one transition assumed: they are months apart); None when the offsets agree."""
    after = hi.astimezone(tz).utcoffset()
    if lo.astimezone(tz).utcoffset() == after:
        return None
    # Whole seconds since the epoch (transitions fall on them): a <= lo < change <= b.
    a, b = (lo - _EPOCH) // _SECOND, -((_EPOCH - hi) // _SECOND)
    while b - a > 1:
        mid = (a + b) // 2
        if (_EPOCH + mid * _SECOND).astimezone(tz).utcoffset() == after:
            b = mid
        else:
            a = mid
    return _EPOCH + b * _SECOND


_SECOND = timedelta(seconds=1)


def floor_period(dt: datetime, period: Period, tz: tzinfo) -> datetime:
    """Start (UTC) of the period bucket that contains instant ``dt``.

    An hour bucket is a run of instants that show the same local hour under one UTC
    offset: it starts at the local hour's start or, when the offset changed since then,
    at the change. That matters where a shift is not a whole hour (Lord Howe Island's 30
    minutes, Chatham's change at 2:45): 02:30+11:00 right after 02:00+10:30 starts hour
    02, half an hour long."""
    utc = dt.astimezone(UTC)
    if period is Period.HOUR:
        local = utc.astimezone(tz)
        start = utc - timedelta(
            minutes=local.minute, seconds=local.second, microseconds=local.microsecond
        )
        return _offset_change(start, utc, tz) or start
    local_day = utc.astimezone(tz).date()
    if period is Period.WEEK:
        local_day -= timedelta(days=local_day.weekday())
    elif period is Period.MONTH:
        local_day = local_day.replace(day=1)
    start = _local_midnight(local_day, tz)
    if start > utc:  # a day whose midnight was skipped and "re-entered" (rare zones)
        start = _local_midnight(local_day - timedelta(days=1), tz)
    return start


def next_period(start: datetime, period: Period, tz: tzinfo) -> datetime:
    """Start (UTC) of the period bucket after the one starting at ``start``."""
    if period is Period.HOUR:
        nxt = floor_period(start + timedelta(hours=1), period, tz)
        if nxt <= start:
            nxt = start + timedelta(hours=1)
        # An offset change before that starts a bucket of its own (Chatham: 03:45+13:45).
        return _offset_change(start, nxt - timedelta(microseconds=1), tz) or nxt
    local_day = start.astimezone(tz).date()
    if period is Period.DAY:
        nd = local_day + timedelta(days=1)
    elif period is Period.WEEK:
        nd = local_day + timedelta(days=7 - local_day.weekday())
    else:
        nd = (local_day.replace(day=28) + timedelta(days=4)).replace(day=1)
    return _local_midnight(nd, tz)


@dataclass(frozen=True, slots=True)
class Bucket:
    """One period bucket: [start, end) as UTC instants, with the zone for display."""

    start: datetime
    end: datetime

    @property
    def start_minute(self) -> int:
        return epoch_minute(self.start)

    @property
    def end_minute(self) -> int:
        return epoch_minute(self.end)


def period_buckets(
    start: datetime, end: datetime, period: Period, tz: tzinfo, *, max_buckets: int
) -> list[Bucket]:
    """Every period bucket that overlaps [start, end), in order, each whole (not clipped)."""
    if end <= start:
        raise BadQuery("end", "must be after start")
    out: list[Bucket] = []
    b = floor_period(start, period, tz)
    while b < end:
        n = next_period(b, period, tz)
        out.append(Bucket(b, n))
        if len(out) > max_buckets:
            coarser = f" or ask for {_COARSER[period]} buckets" if period in _COARSER else ""
            raise BadQuery("end", f"range spans more than {max_buckets} {period.value} buckets:"
                                  f" narrow the range{coarser}")  # fmt: skip
        b = n
    for bucket in out:
        for edge in (bucket.start, bucket.end):
            if (edge - _EPOCH) % timedelta(minutes=QUARTER):
                raise BadQuery(
                    "tz",
                    f"{tz} has a UTC offset that is not a multiple of 15 minutes in this range",
                )
    return out


def iter_minutes(start: int, end: int, step: int = 1) -> Iterator[int]:
    return iter(range(start, end, step))
