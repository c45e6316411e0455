"""Bucket and time-zone math: local-midnight boundaries, DST days, 15-minute composition."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.domain.buckets import (
    MINUTE,
    QUARTER,
    Period,
    Piece,
    cover,
    floor_period,
    parse_period,
    parse_tz,
    period_buckets,
)
from analytics.domain.errors import BadQuery

pytestmark = pytest.mark.unit

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe",
         "America/Sao_Paulo", "Pacific/Chatham", "Asia/Kathmandu"]  # fmt: skip
instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
)


@pytest.mark.parametrize(
    ("period", "hint"),
    [(Period.HOUR, " or ask for day, week or month buckets"), (Period.DAY, " or ask for week or month buckets"),
     (Period.WEEK, " or ask for month buckets"), (Period.MONTH, "")],
)  # fmt: skip
def test_a_range_over_the_bucket_limit_says_what_to_ask_instead(period: Period, hint: str) -> None:
    start = datetime(2020, 1, 1, tzinfo=UTC)
    with pytest.raises(BadQuery) as err:
        period_buckets(start, start + timedelta(days=4000), period, UTC, max_buckets=100)
    assert str(err.value) == f"end: range spans more than 100 {period.value} buckets: narrow the range{hint}"


def test_berlin_spring_forward_day_has_23_hours() -> None:
    tz = ZoneInfo("Europe/Berlin")
    start = datetime(2026, 3, 29, tzinfo=tz)
    [b] = period_buckets(start, start + timedelta(hours=1), Period.DAY, tz, max_buckets=10)
    assert b.end - b.start == timedelta(hours=23)
    assert b.start == datetime(2026, 3, 28, 23, tzinfo=UTC)
    assert b.end.astimezone(tz).hour == 0


def test_new_york_fall_back_day_has_25_hours() -> None:
    tz = ZoneInfo("America/New_York")
    start = datetime(2026, 11, 1, 12, tzinfo=tz)
    [b] = period_buckets(start, start + timedelta(minutes=1), Period.DAY, tz, max_buckets=10)
    assert b.end - b.start == timedelta(hours=25)
    assert b.start == datetime(2026, 11, 1, 4, tzinfo=UTC)


def test_kolkata_hours_start_at_half_past_utc() -> None:
    tz = ZoneInfo("Asia/Kolkata")
    start = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    buckets = period_buckets(start, start + timedelta(hours=2), Period.HOUR, tz, max_buckets=10)
    assert [b.start.minute for b in buckets] == [30, 30, 30]
    assert all(b.end - b.start == timedelta(hours=1) for b in buckets)


def test_week_starts_monday_local_midnight_and_month_boundaries() -> None:
    tz = ZoneInfo("Europe/Berlin")
    wk = floor_period(datetime(2026, 3, 29, 12, tzinfo=tz), Period.WEEK, tz)  # a Sunday
    assert wk.astimezone(tz) == datetime(2026, 3, 23, tzinfo=tz)
    mo = period_buckets(datetime(2026, 3, 15, tzinfo=tz), datetime(2026, 4, 2, tzinfo=tz),
                        Period.MONTH, tz, max_buckets=10)  # fmt: skip
    assert [b.start.astimezone(tz).date().isoformat() for b in mo] == ["2026-03-01", "2026-04-01"]
    assert mo[0].end - mo[0].start == timedelta(days=31, hours=-1)  # March loses an hour


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(ZONES),
    st.sampled_from(list(Period)),
    instants,
    st.integers(min_value=1, max_value=60 * 24 * 70),
)
def test_period_buckets_tile_the_range_at_local_boundaries(
    zone: str, period: Period, start: datetime, minutes: int
) -> None:
    tz = ZoneInfo(zone)
    end = start + timedelta(minutes=minutes)
    try:
        buckets = period_buckets(start, end, period, tz, max_buckets=5000)
    except BadQuery as exc:  # only for zones with sub-15-minute offsets (none of ours)
        raise AssertionError(exc) from exc
    assert buckets[0].start <= start < buckets[0].end
    assert buckets[-1].start < end <= buckets[-1].end
    for a, b in itertools.pairwise(buckets):
        assert a.end == b.start  # contiguous: every instant in exactly one bucket
    for b in buckets:
        assert b.start < b.end
        assert b.start_minute % QUARTER == 0 and b.end_minute % QUARTER == 0
        local = b.start.astimezone(tz)
        if period is Period.HOUR:  # a local hour start, or where the offset changed
            before = b.start - timedelta(microseconds=1)
            assert local.minute == 0 or before.astimezone(tz).utcoffset() != local.utcoffset()
            assert b.end - b.start <= timedelta(hours=1)
        else:
            # local midnight, or the first instant of a day whose midnight was skipped
            before = (b.start - timedelta(minutes=1)).astimezone(tz)
            assert before.date() < local.date()
            if period is Period.DAY:
                assert timedelta(hours=22) <= b.end - b.start <= timedelta(hours=26)
            if period is Period.WEEK:
                assert local.weekday() == 0
            if period is Period.MONTH:
                assert local.day == 1


def _offset_changes(tz: ZoneInfo, year: int) -> list[datetime]:
    """The instants (to the minute) at which ``tz`` changes its UTC offset in ``year``."""
    out, day = [], datetime(year, 1, 1, tzinfo=UTC)
    while day.year == year:
        lo, hi = day, day + timedelta(days=1)
        if lo.astimezone(tz).utcoffset() != hi.astimezone(tz).utcoffset():
            while hi - lo > timedelta(minutes=1):
                mid = lo + (hi - lo) // timedelta(minutes=2) * timedelta(minutes=1)
                same = mid.astimezone(tz).utcoffset() == lo.astimezone(tz).utcoffset()
                lo, hi = (mid, hi) if same else (lo, mid)
            out.append(hi)
        day += timedelta(days=1)
    return out


@pytest.mark.parametrize(
    ("zone", "year"),
    [("Australia/Lord_Howe", 2026), ("Pacific/Chatham", 2026), ("America/New_York", 2026),
     ("Europe/Berlin", 2026), ("Asia/Pyongyang", 2015), ("America/Sao_Paulo", 2018)],
)  # fmt: skip
def test_hour_buckets_are_runs_of_one_local_hour_under_one_offset(zone: str, year: int) -> None:
    """Around every offset change: each hour bucket is every instant that shows one local
    hour under one offset, and no more (Lord Howe's 30-minute shift, Chatham's at 2:45)."""
    tz = ZoneInfo(zone)

    def shown(t: datetime) -> tuple[object, ...]:
        local = t.astimezone(tz)
        return local.date(), local.hour, local.utcoffset()

    changes = _offset_changes(tz, year)
    assert changes, f"{zone} changed its offset in {year}"
    for change in changes:
        start = change - timedelta(hours=3)
        buckets = period_buckets(start, change + timedelta(hours=3), Period.HOUR, tz, max_buckets=20)
        for b in buckets:
            minutes = (b.end - b.start) // timedelta(minutes=1)
            assert {shown(b.start + timedelta(minutes=m)) for m in range(minutes)} == {shown(b.start)}
            assert shown(b.end) != shown(b.end - timedelta(minutes=1)), b  # nothing left out
        assert change in {b.start for b in buckets}


def test_lord_howe_spring_forward_hour_two_lasts_half_an_hour() -> None:
    tz = ZoneInfo("Australia/Lord_Howe")  # 2026-10-04 02:00+10:30 -> 02:30+11:00
    start = datetime(2026, 10, 3, 14, 30, tzinfo=UTC)
    buckets = period_buckets(start, start + timedelta(minutes=90), Period.HOUR, tz, max_buckets=5)
    assert [(b.start.astimezone(tz).isoformat(), b.end - b.start) for b in buckets] == [
        ("2026-10-04T01:00:00+10:30", timedelta(hours=1)),
        ("2026-10-04T02:30:00+11:00", timedelta(minutes=30)),
    ]
    assert floor_period(datetime(2026, 10, 3, 15, 45, tzinfo=UTC), Period.HOUR, tz) == datetime(
        2026, 10, 3, 15, 30, tzinfo=UTC
    )


@given(st.integers(0, 10**8), st.integers(0, 5000))
def test_cover_is_the_exact_union_of_base_buckets(start: int, length: int) -> None:
    end = start + length
    pieces = cover(start, end)
    minutes: list[int] = []
    for p in pieces:
        assert p.grain in (MINUTE, QUARTER)
        assert p.start % p.grain == 0 and p.end % p.grain == 0
        minutes.extend(range(p.start, p.end))
    assert minutes == list(range(start, end))
    assert sum(p.grain == MINUTE for p in pieces) <= 2
    assert sum((p.end - p.start) for p in pieces if p.grain == MINUTE) <= 28


def test_cover_examples() -> None:
    assert cover(7, 7) == ()
    assert cover(0, 30) == (Piece(QUARTER, 0, 30),)
    assert cover(3, 32) == (Piece(MINUTE, 3, 15), Piece(QUARTER, 15, 30), Piece(MINUTE, 30, 32))


@pytest.mark.parametrize("value", ["minute", "Day", "", "year"])
def test_unknown_period_names_the_parameter(value: str) -> None:
    with pytest.raises(BadQuery) as err:
        parse_period(value)
    assert err.value.parameter == "period"


@pytest.mark.parametrize("value", ["Mars/Olympus", "../etc/passwd", "", "Europe/", "localtime", "Factory",
                                   "posixrules", "posix/Europe/Berlin"])  # fmt: skip
def test_unknown_tz_names_the_parameter(value: str) -> None:
    with pytest.raises(BadQuery) as err:
        parse_tz(value)
    assert err.value.parameter == "tz"


def test_too_many_buckets_is_a_bad_end() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(BadQuery) as err:
        period_buckets(start, start + timedelta(days=50), Period.HOUR, UTC, max_buckets=1000)
    assert err.value.parameter == "end"


@pytest.mark.parametrize(
    ("zone", "day", "start", "hours"),
    [
        # Clocks go from 00:00 to 01:00: the day starts at the gap, the instant that
        # shows 01:00; the hour before it (23:00 under the new offset) never happened.
        ("America/Santiago", "2026-09-06", "2026-09-06T04:00:00+00:00", 23),
        ("America/Havana", "2026-03-08", "2026-03-08T05:00:00+00:00", 23),
        ("Atlantic/Azores", "2026-03-29", "2026-03-29T01:00:00+00:00", 23),
        ("Asia/Beirut", "2026-03-29", "2026-03-28T22:00:00+00:00", 23),
        # Clocks go from 01:00 back to 00:00: midnight happens twice, the day starts at
        # the first one and lasts 25 hours.
        ("America/Havana", "2026-11-01", "2026-11-01T04:00:00+00:00", 25),
        ("Atlantic/Azores", "2026-10-25", "2026-10-25T00:00:00+00:00", 25),
    ],
)  # fmt: skip
def test_day_buckets_where_the_clock_changes_at_midnight(
    zone: str, day: str, start: str, hours: int
) -> None:
    """Mutation QA: a day whose DST change is at local midnight starts at the first
    instant that shows that date (the earlier of two midnights, or the end of a skipped
    one). Taking the later midnight (fold=1) moved an hour of the day into the day before
    (a fall-back day counted from its second midnight) or started the day an hour before
    it began (a spring-forward day counted from 23:00 the evening before): events land
    in the wrong day's bucket."""
    tz = ZoneInfo(zone)
    first = datetime.fromisoformat(start)
    assert first.astimezone(tz).date().isoformat() == day  # the day's first instant...
    assert (first - timedelta(microseconds=1)).astimezone(tz).date().isoformat() < day
    buckets = period_buckets(first - timedelta(hours=1), first + timedelta(minutes=1),
                             Period.DAY, tz, max_buckets=5)  # fmt: skip
    assert [b.start for b in buckets][1:] == [first], buckets
    assert buckets[0].end == first  # the day before ends where this one starts
    assert buckets[1].end - buckets[1].start == timedelta(hours=hours)
    for instant in (first, first + timedelta(minutes=59), first - timedelta(minutes=1)):
        b = floor_period(instant, Period.DAY, tz)
        assert b <= instant, (instant, b)
        assert b.astimezone(tz).date() == instant.astimezone(tz).date(), (instant, b)


def test_a_day_entered_inside_a_gap_past_midnight_keeps_its_first_instants() -> None:
    """Mutation QA: Toronto, 1919-03-30 23:30 EST -> 1919-03-31 00:30 EDT. Local midnight
    of the 31st falls inside the gap, and zoneinfo maps it (fold=0) to 05:00Z, half an
    hour after the day's first instant (04:30Z, 00:30 EDT). Without the guard in
    floor_period the bucket of an instant at 04:45Z starts after it: the instants before
    05:00Z are in no bucket of a range starting there (lost from every answer). With the
    guard they stay in the bucket of the day before: no bucket starts after an instant it
    holds. (Which of the two days they belong to is not pinned here: the README's "a
    skipped midnight starts the day at its first instant" would say the 31st.)"""
    tz = ZoneInfo("America/Toronto")
    gap = datetime(1919, 3, 31, 4, 30, tzinfo=UTC)
    before, after = (gap - timedelta(seconds=1)).astimezone(tz), gap.astimezone(tz)
    if (before.hour, before.minute, after.hour, after.minute) != (23, 29, 0, 30):
        pytest.skip("this zoneinfo build lacks Toronto's 1919 history")
    instant = gap + timedelta(minutes=15)  # 00:45 EDT on the 31st
    start = floor_period(instant, Period.DAY, tz)
    assert start <= instant, f"bucket starts at {start.isoformat()}, after {instant.isoformat()}"
    [b] = period_buckets(instant, instant + timedelta(minutes=1), Period.DAY, tz, max_buckets=5)
    assert b.start <= instant < b.end
    # still a day's first instant: the minute before it shows an earlier date
    assert (b.start - timedelta(minutes=1)).astimezone(tz).date() < b.start.astimezone(tz).date()
