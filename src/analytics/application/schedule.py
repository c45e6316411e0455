"""Which periods a periodic job owes, from the clock and its stored watermark (pure logic).

Period ``k`` of a job with period ``P`` seconds covers ``[k*P, (k+1)*P)`` in UTC epoch
seconds (hours and days line up with UTC midnight). It is due once it has closed and the
job's delay has passed: ``now >= (k+1)*P + delay``. The watermark is the start of the
last period whose task was enqueued; after downtime a job catches up every period after
it (at most ``max_catch_up``); a job without catch-up only ever runs the latest period.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime


def latest_due_period(now: datetime, period_s: int, delay_s: float) -> int:
    """Start (epoch seconds) of the newest period that is closed and past its delay."""
    k = math.floor((now.timestamp() - delay_s) / period_s) - 1
    return k * period_s


def due_periods(
    now: datetime,
    *,
    period_s: int,
    delay_s: float,
    watermark: int | None,
    max_catch_up: int,
    catch_up: bool = True,
) -> list[int]:
    """Period starts to enqueue now, oldest first; empty when nothing new is due."""
    latest = latest_due_period(now, period_s, delay_s)
    if watermark is not None and latest <= watermark:
        return []
    if watermark is None or not catch_up:
        return [latest]
    first = max(watermark + period_s, latest - (max_catch_up - 1) * period_s)
    return list(range(first, latest + 1, period_s))


def period_bounds(start: int, period_s: int) -> tuple[datetime, datetime]:
    return (
        datetime.fromtimestamp(start, UTC),
        datetime.fromtimestamp(start + period_s, UTC),
    )
