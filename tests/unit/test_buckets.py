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
