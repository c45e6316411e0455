"""Read use cases: time-bucketed aggregations and dashboard metrics, cached.

Both read the aggregate counters only (never raw events), so their cost depends on the
number of base buckets (and distinct users/sessions) in the window, not on how many
events are stored. Results are cached per period bucket (aggregations) or per resolved
window (dashboard) under keys that include the invalidation versions of every UTC day the
bucket touches: the worker bumps a day's version after counting an event of that day, so
no number computed before the event is served after it.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import ROUND_HALF_EVEN, Decimal

import msgspec

from analytics.domain.aggregation import Summary, micros_to_str
from analytics.domain.buckets import (
    MINUTE,
    Bucket,
    Period,
    Piece,
    cover,
    epoch_minute,
    from_minute,
    parse_period,
    parse_tz,
    period_buckets,
    utc_days,
)
from analytics.domain.errors import BadQuery
from analytics.domain.ports import AggregateStore, Cache, Clock
from analytics.domain.search import parse_time

UNIQUES = "exact"
_MIN_DATE = datetime(2000, 1, 1, tzinfo=UTC)
_MAX_DATE = datetime(2100, 1, 1, tzinfo=UTC)
LAST_WINDOWS = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
}


@dataclass(frozen=True, slots=True)
class QueryLimits:
    max_buckets: int = 1000
    dashboard_max_window: timedelta = timedelta(days=31)
    top_products: int = 10
    series_minutes: int = 60
    ttl_closed_s: int = 86_400
    #: A closed bucket on the current UTC day: that day's version moves with every worker
    #: round that stores today's events, retiring the entry within seconds, and each
    #: retired copy stayed in Redis for ttl_closed_s (soak: ~375 MB a day at 3 reads/s).
    ttl_today_s: int = 3600
    ttl_open_s: int = 10
    ttl_dashboard_s: int = 5


@dataclass(frozen=True, slots=True)
class QueryDeps:
    aggregates: AggregateStore
    clock: Clock
    cache: Cache | None = None
    limits: QueryLimits = QueryLimits()


# --- parameters ---------------------------------------------------------------------------


def check_params(params: Mapping[str, object], allowed: Sequence[str]) -> dict[str, str]:
    """Reject unknown and repeated parameters, naming them; return the single values."""
    out: dict[str, str] = {}
    for name, value in params.items():
        if name not in allowed:
            known = f"allowed: {', '.join(allowed)}" if allowed else "this route takes none"
            raise BadQuery(name, f"unknown parameter; {known}")
        if not isinstance(value, str):
            raise BadQuery(name, "given more than once")
        out[name] = value
    return out


def parse_instant(name: str, value: str, tz: tzinfo) -> datetime:
    """RFC 3339 with an offset (``2026-03-29T00:00:00+01:00``, ``...Z``: search's
    :func:`~analytics.domain.search.parse_time`), or a date (``2026-03-29``) meaning local
    midnight in ``tz``."""
    if len(value) != 10:
        dt = parse_time(name, value)
    else:
        try:  # fromisoformat alone also takes basic forms (20260101) of that length
            if not _DATE.fullmatch(value):
                raise ValueError(value)
            d = date.fromisoformat(value)
        except ValueError:
            raise BadQuery(name, f"{value!r} is not an RFC 3339 timestamp or YYYY-MM-DD date") from None
        dt = datetime(d.year, d.month, d.day, tzinfo=tz)
    if not _MIN_DATE <= dt <= _MAX_DATE:  # 2100-01-01 itself: the end of 2099's last bucket
        raise BadQuery(name, "must be between 2000-01-01 and 2100-01-01")
    return dt.astimezone(UTC)


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_event_type(value: str | None) -> str | None:
    if value is None:
        return None
    import re

    if not re.fullmatch(r"[a-z][a-z0-9_.:\-]{0,63}", value):
        raise BadQuery("event_type", f"{value!r} is not a valid event type")
    return value


# --- aggregations ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AggregationQuery:
    period: Period
    start: datetime
    end: datetime
    tz_name: str
    tz: tzinfo
    event_type: str | None
    buckets: tuple[Bucket, ...]


AGGREGATION_PARAMS = ("start", "end", "tz", "event_type")


def parse_aggregation_query(
    period: str, params: Mapping[str, object], *, max_buckets: int
) -> AggregationQuery:
    p = parse_period(period)
    values = check_params(params, AGGREGATION_PARAMS)
    tz_name = values.get("tz", "UTC")
    tz = parse_tz(tz_name)
    for required in ("start", "end"):
        if required not in values:
            raise BadQuery(required, "is required")
    start = parse_instant("start", values["start"], tz)
    end = parse_instant("end", values["end"], tz)
    if end <= start:
        raise BadQuery("end", "must be after start")
    buckets = period_buckets(start, end, p, tz, max_buckets=max_buckets)
    return AggregationQuery(
        p, start, end, tz_name, tz, parse_event_type(values.get("event_type")), tuple(buckets)
    )


class BucketOut(msgspec.Struct):
    start: str
    end: str
    count: int
    unique_users: int
    unique_sessions: int
    revenue: dict[str, str]


class AggregationOut(msgspec.Struct):
    period: str
    tz: str
    event_type: str | None
    start: str
    end: str
    uniques: str
    buckets: list[msgspec.Raw]


_encode = msgspec.json.Encoder().encode


def _revenue(s: Summary) -> dict[str, str]:
    """Revenue per currency, "0.00" for a currency with orders at price 0 (a zero counter
    is no row, but the orders name the currency)."""
    micros = s.revenue_micros
    return {c: micros_to_str(micros.get(c, 0)) for c in sorted(micros.keys() | s.orders.keys())}


def _key(*parts: object) -> str:
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()


def _lookup(
    cache: Cache, kind: str, spans: Sequence[tuple[datetime, datetime]], extra: tuple[object, ...]
) -> list[tuple[str, bytes | None]] | None:
    """Per span: its key under the current versions of the UTC days it covers, and the
    value cached there (one round trip)."""
    entries = [
        (f"{kind}:{_key(extra, s.isoformat(), e.isoformat())}", utc_days(s, e)) for s, e in spans
    ]
    return cache.lookup(entries)


def _bucket_ttl(end: datetime, now: datetime, limits: QueryLimits) -> int:
    """How long a bucket's answer is cached: open, closed on the current UTC day, closed."""
    if end > now:
        return limits.ttl_open_s
    if end > now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0):
        return min(limits.ttl_today_s, limits.ttl_closed_s)
    return limits.ttl_closed_s


def query_aggregations(q: AggregationQuery, *, deps: QueryDeps) -> AggregationOut:
    now = deps.clock.now()
    spans = [(b.start, b.end) for b in q.buckets]
    found = (
        _lookup(deps.cache, "agg", spans, (q.tz_name, q.event_type))
        if deps.cache is not None
        else None
    )
    keys = [k for k, _ in found] if found is not None else None
    cached: list[bytes | None] = [v for _, v in found] if found is not None else [None] * len(spans)
    missing = [i for i, c in enumerate(cached) if c is None]
    if missing:
        windows = [cover(q.buckets[i].start_minute, q.buckets[i].end_minute) for i in missing]
        summaries = deps.aggregates.summarize(windows, q.event_type)
        to_store: list[tuple[str, bytes, int]] = []
        for i, s in zip(missing, summaries, strict=True):
            b = q.buckets[i]
            data = _encode(
                BucketOut(
                    start=b.start.astimezone(q.tz).isoformat(),
                    end=b.end.astimezone(q.tz).isoformat(),
                    count=s.count,
                    unique_users=s.unique_users,
                    unique_sessions=s.unique_sessions,
                    revenue=_revenue(s),
                )
            )
            cached[i] = data
            if keys is not None:
                to_store.append((keys[i], data, _bucket_ttl(b.end, now, deps.limits)))
        if to_store and deps.cache is not None:
            deps.cache.set_many(to_store)
    return AggregationOut(
        period=q.period.value,
        tz=q.tz_name,
        event_type=q.event_type,
        start=q.buckets[0].start.astimezone(q.tz).isoformat(),
        end=q.buckets[-1].end.astimezone(q.tz).isoformat(),
        uniques=UNIQUES,
        buckets=[msgspec.Raw(c) for c in cached if c is not None],
    )


# --- dashboard -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DashboardQuery:
    start_minute: int
    end_minute: int


DASHBOARD_PARAMS = ("start", "end", "last")


def parse_dashboard_query(
    params: Mapping[str, object], *, now: datetime, max_window: timedelta
) -> DashboardQuery:
    """``last=15m|1h|24h|7d`` (ending with the current minute) or ``start``+``end``;
    both are resolved to whole minutes (start floored, end rounded up)."""
    values = check_params(params, DASHBOARD_PARAMS)
    current = epoch_minute(now) + 1  # windows end with the current minute, included
    if "last" in values:
        if "start" in values or "end" in values:
            raise BadQuery("last", "use either last or start/end, not both")
        if values["last"] not in LAST_WINDOWS:
            raise BadQuery("last", f"choose from {', '.join(LAST_WINDOWS)}")
        minutes = int(LAST_WINDOWS[values["last"]] / timedelta(minutes=1))
        return DashboardQuery(current - minutes, current)
    if "start" not in values and "end" not in values:
        return DashboardQuery(current - 60, current)  # default: the last hour
    for required in ("start", "end"):
        if required not in values:
            raise BadQuery(required, "is required with start/end (or use last)")
    start = parse_instant("start", values["start"], UTC)
    end = parse_instant("end", values["end"], UTC)
    if end <= start:
        raise BadQuery("end", "must be after start")
    if end - start > max_window:
        raise BadQuery("end", f"window is longer than the maximum of {max_window.days} days")
    return DashboardQuery(epoch_minute(start), epoch_minute(end - timedelta(microseconds=1)) + 1)


class ProductOut(msgspec.Struct):
    product_id: str
    count: int
    revenue: dict[str, str]


class PointOut(msgspec.Struct):
    minute: str
    count: int
    unique_users: int
    unique_sessions: int
    revenue: dict[str, str]


class DashboardOut(msgspec.Struct):
    start: str
    end: str
    uniques: str
    total_events: int
    unique_users: int
    unique_sessions: int
    revenue: dict[str, str]
    orders: dict[str, int]
    average_order_value: dict[str, str]
    converted_sessions: int
    conversion_rate: float
    events_by_type: dict[str, int]
    top_products_by_revenue: list[ProductOut]
    top_products_by_count: list[ProductOut]
    series: list[PointOut]
    generated_at: str


def _aov(revenue: int, orders: int) -> str:
    per = (Decimal(revenue) / Decimal(orders)).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
    return micros_to_str(int(per))


@functools.lru_cache(maxsize=256)
def _dashboard_entry(
    start_minute: int, end_minute: int, top: int, series: int
) -> tuple[str, tuple[str, ...]]:
    """The window's cache base key and the UTC days it covers (a pure function of the
    window: memoized, so a warm request does not rebuild them)."""
    start, end = from_minute(start_minute), from_minute(end_minute)
    base = f"dash:{_key((top, series), start.isoformat(), end.isoformat())}"
    return base, tuple(utc_days(start, end))


def query_dashboard(q: DashboardQuery, *, deps: QueryDeps) -> bytes:
    """The dashboard document as JSON bytes (cached for ``ttl_dashboard_s``): one cache
    round trip when it is cached under the current versions of the window's days."""
    lim = deps.limits
    key = None
    if deps.cache is not None:
        entry = _dashboard_entry(q.start_minute, q.end_minute, lim.top_products, lim.series_minutes)
        found = deps.cache.lookup([entry])
        if found is not None:
            key, hit = found[0]
            if hit is not None:
                return hit
    start, end = from_minute(q.start_minute), from_minute(q.end_minute)
    window = cover(q.start_minute, q.end_minute)
    series_start = max(q.start_minute, q.end_minute - lim.series_minutes)
    minutes = list(range(series_start, q.end_minute))
    summaries = deps.aggregates.summarize(
        [window, *[(Piece(MINUTE, m, m + 1),) for m in minutes]], None
    )
    total, points = summaries[0], summaries[1:]
    bd = deps.aggregates.breakdown(window, top=lim.top_products)

    def products(stats: Sequence[object]) -> list[ProductOut]:
        return [
            ProductOut(p.product_id, p.count, {c: micros_to_str(m) for c, m in p.revenue_micros.items()})  # type: ignore[attr-defined]
            for p in stats
        ]  # fmt: skip

    doc = DashboardOut(
        start=start.isoformat(),
        end=end.isoformat(),
        uniques=UNIQUES,
        total_events=total.count,
        unique_users=total.unique_users,
        unique_sessions=total.unique_sessions,
        revenue=_revenue(total),
        orders=dict(sorted(total.orders.items())),
        average_order_value={
            c: _aov(total.revenue_micros.get(c, 0), n) for c, n in sorted(total.orders.items()) if n
        },
        converted_sessions=bd.converted_sessions,
        conversion_rate=round(bd.converted_sessions / total.unique_sessions, 6)
        if total.unique_sessions
        else 0.0,
        events_by_type=bd.events_by_type,
        top_products_by_revenue=products(bd.top_by_revenue),
        top_products_by_count=products(bd.top_by_count),
        series=[
            PointOut(
                from_minute(m).isoformat(), s.count, s.unique_users, s.unique_sessions, _revenue(s)
            )
            for m, s in zip(minutes, points, strict=True)
        ],
        generated_at=deps.clock.now().isoformat(),
    )
    data = _encode(doc)
    if key is not None and deps.cache is not None:
        deps.cache.set_many([(key, data, lim.ttl_dashboard_s)])
    return data
