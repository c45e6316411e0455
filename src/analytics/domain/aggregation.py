"""What one event contributes to the aggregates, and the read models built from them.

Every aggregate is a plain integer counter under a :class:`CounterKey`, so contributions
add, corrections add, and the order in which they land never matters:

| kind | dim        | dim2     | value                                               |
|------|------------|----------|-----------------------------------------------------|
| n    | ""         | ""       | events                                              |
| u    | user_id    | ""       | events of this user (a row with value > 0 = member) |
| s    | session_id | ""       | events of this session                              |
| ua   | user_id    | ""       | as ``u``, all event types together (event_type "")  |
| sa   | session_id | ""       | as ``s``, all event types together (event_type "")  |
| r    | currency   | ""       | revenue in integer micros (price x quantity x 1e6)  |
| o    | currency   | ""       | priced events (orders), for the average order value |
| p    | product_id | ""       | events naming the product                           |
| pr   | product_id | currency | revenue of the product in micros                    |

Unique users and sessions are exact: the number of distinct ``u`` / ``s`` members with a
positive value over the union of the base buckets of a window (``ua``/``sa`` without an
event-type filter, so a member active in several types is read once per bucket, not once
per type).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import NamedTuple

from analytics.domain.buckets import GRAINS, bucket_of, epoch_minute
from analytics.domain.events import Event

PURCHASE = "purchase"  # the event type whose value is revenue and that converts a session
MICROS = 1_000_000

COUNT, USER, SESSION, REVENUE, ORDERS, PRODUCT, PRODUCT_REVENUE = (
    "n", "u", "s", "r", "o", "p", "pr",
)  # fmt: skip
USER_ALL, SESSION_ALL = "ua", "sa"  # members over all event types (event_type "")
ALL_TYPES = ""
KINDS = (COUNT, USER, SESSION, REVENUE, ORDERS, PRODUCT, PRODUCT_REVENUE, USER_ALL, SESSION_ALL)


class CounterKey(NamedTuple):
    kind: str
    grain: int  # minutes: 1 or 15
    bucket: int  # epoch minute of the bucket start
    event_type: str
    dim: str = ""
    dim2: str = ""


def to_micros(amount: Decimal) -> int:
    """Exact integer micros; validation caps prices at 6 decimals, so this never rounds."""
    scaled = amount.scaleb(6)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} has more than 6 decimals")
    return int(scaled)


def micros_to_str(micros: int) -> str:
    """Exact decimal string with at least two decimals: 12500000 -> '12.50'."""
    d = Decimal(micros).scaleb(-6).normalize()
    exp = d.as_tuple().exponent
    if isinstance(exp, int) and exp > -2:
        d = d.quantize(Decimal("0.01"))
    return f"{d:f}"


@dataclass(frozen=True, slots=True)
class Contribution:
    """One event's counter increments, applied at most once per ``event_id``."""

    event_id: uuid.UUID
    minute: int  # epoch minute of the event's timestamp
    deltas: Mapping[CounterKey, int]


def contribution(event: Event) -> Contribution:
    """The increments of one event, at both base grains."""
    minute = epoch_minute(event.timestamp)
    deltas: dict[CounterKey, int] = {}
    et = event.event_type
    value = (
        to_micros(event.total_value) if event.total_value is not None and event.currency else None
    )
    for grain in GRAINS:
        b = bucket_of(minute, grain)
        deltas[CounterKey(COUNT, grain, b, et)] = 1
        deltas[CounterKey(USER, grain, b, et, event.user_id)] = 1
        deltas[CounterKey(USER_ALL, grain, b, ALL_TYPES, event.user_id)] = 1
        if event.session_id:
            deltas[CounterKey(SESSION, grain, b, et, event.session_id)] = 1
            deltas[CounterKey(SESSION_ALL, grain, b, ALL_TYPES, event.session_id)] = 1
        if value is not None:
            cur = event.currency or ""
            deltas[CounterKey(REVENUE, grain, b, et, cur)] = value
            deltas[CounterKey(ORDERS, grain, b, et, cur)] = 1
        if event.product_id:
            deltas[CounterKey(PRODUCT, grain, b, et, event.product_id)] = 1
            if value is not None:
                deltas[CounterKey(PRODUCT_REVENUE, grain, b, et, event.product_id, event.currency or "")] = value  # fmt: skip
    return Contribution(event.event_id, minute, deltas)


def recompute(events: Iterable[Event]) -> dict[CounterKey, int]:
    """Aggregates from scratch: each ``event_id`` once, whatever the duplicates."""
    totals: dict[CounterKey, int] = defaultdict(int)
    seen: set[uuid.UUID] = set()
    for e in events:
        if e.event_id in seen:
            continue
        seen.add(e.event_id)
        for k, v in contribution(e).deltas.items():
            totals[k] += v
    return {k: v for k, v in totals.items() if v}


def drift(
    expected: Mapping[CounterKey, int], actual: Mapping[CounterKey, int]
) -> dict[CounterKey, int]:
    """The corrections (expected - actual) that make ``actual`` equal ``expected``."""
    out: dict[CounterKey, int] = {}
    for k in expected.keys() | actual.keys():
        d = expected.get(k, 0) - actual.get(k, 0)
        if d:
            out[k] = d
    return out


# --- read models ----------------------------------------------------------------------


@dataclass(slots=True)
class Summary:
    """Totals of a window (a span of base buckets), optionally for one event type."""

    count: int = 0
    unique_users: int = 0
    unique_sessions: int = 0
    revenue_micros: dict[str, int] = field(default_factory=dict)  # per currency
    orders: dict[str, int] = field(default_factory=dict)  # priced purchases per currency


@dataclass(frozen=True, slots=True)
class ProductStat:
    product_id: str
    count: int
    revenue_micros: dict[str, int]


@dataclass(slots=True)
class Breakdown:
    """The dashboard's extra dimensions over one window."""

    events_by_type: dict[str, int] = field(default_factory=dict)
    converted_sessions: int = 0  # distinct sessions with a purchase
    top_by_count: list[ProductStat] = field(default_factory=list)
    top_by_revenue: list[ProductStat] = field(default_factory=list)


def summarize_counters(
    counters: Mapping[CounterKey, int],
    pieces: Iterable[tuple[int, int, int]],
    event_type: str | None,
) -> Summary:
    """Reference implementation of a window summary over raw counters (fakes, tests)."""
    spans = list(pieces)

    def inside(k: CounterKey) -> bool:
        return any(k.grain == g and s <= k.bucket < e for g, s, e in spans)

    s = Summary()
    users: set[str] = set()
    sessions: set[str] = set()
    user_kind, session_kind = (USER_ALL, SESSION_ALL) if event_type is None else (USER, SESSION)
    for k, v in counters.items():
        if v <= 0 or not inside(k):
            continue
        if event_type is not None and k.event_type != event_type:
            continue
        if k.kind == COUNT:
            s.count += v
        elif k.kind == user_kind:
            users.add(k.dim)
        elif k.kind == session_kind:
            sessions.add(k.dim)
        elif k.kind == REVENUE and k.event_type == PURCHASE:
            s.revenue_micros[k.dim] = s.revenue_micros.get(k.dim, 0) + v
        elif k.kind == ORDERS and k.event_type == PURCHASE:
            s.orders[k.dim] = s.orders.get(k.dim, 0) + v
    s.unique_users, s.unique_sessions = len(users), len(sessions)
    return s


def breakdown_counters(
    counters: Mapping[CounterKey, int], pieces: Iterable[tuple[int, int, int]], top: int
) -> Breakdown:
    """Reference implementation of the dashboard breakdown over raw counters."""
    spans = list(pieces)
    by_type: dict[str, int] = defaultdict(int)
    converted: set[str] = set()
    p_count: dict[str, int] = defaultdict(int)
    p_rev: dict[str, dict[str, int]] = defaultdict(dict)
    for k, v in counters.items():
        if v <= 0 or not any(k.grain == g and s <= k.bucket < e for g, s, e in spans):
            continue
        if k.kind == COUNT:
            by_type[k.event_type] += v
        elif k.kind == SESSION and k.event_type == PURCHASE:
            converted.add(k.dim)
        elif k.kind == PRODUCT:
            p_count[k.dim] += v
        elif k.kind == PRODUCT_REVENUE and k.event_type == PURCHASE:
            p_rev[k.dim][k.dim2] = p_rev[k.dim].get(k.dim2, 0) + v
    return rank_products(dict(by_type), len(converted), dict(p_count), dict(p_rev), top)


def rank_products(
    by_type: dict[str, int],
    converted: int,
    p_count: Mapping[str, int],
    p_rev: Mapping[str, dict[str, int]],
    top: int,
) -> Breakdown:
    """Top products by events and by revenue (ties broken by product id, so stable).

    Revenue ranks by the sum of micros across currencies: a ranking across currencies
    without exchange rates is only indicative, the per-currency amounts are exact.
    """

    def stat(pid: str) -> ProductStat:
        return ProductStat(pid, p_count.get(pid, 0), dict(sorted(p_rev.get(pid, {}).items())))

    by_count = sorted(p_count, key=lambda p: (-p_count[p], p))[:top]
    by_rev = sorted(
        (p for p in p_rev if sum(p_rev[p].values()) > 0),
        key=lambda p: (-sum(p_rev[p].values()), p),
    )[:top]
    return Breakdown(
        events_by_type=dict(sorted(by_type.items())),
        converted_sessions=converted,
        top_by_count=[stat(p) for p in by_count],
        top_by_revenue=[stat(p) for p in by_rev],
    )
