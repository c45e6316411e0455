"""Overload protection: refuse ingest early (503) while the processing backlog is too deep.

Waiting for a broker that is minutes behind only turns into client timeouts and retries
that deepen the backlog; a 503 with an honest ``Retry-After`` lets clients back off.
"""

from __future__ import annotations

import math

from analytics.domain.errors import Overloaded
from analytics.domain.ports import Backlog


def retry_after_s(depth: int, threshold: int, rate: float | None, max_s: int) -> int:
    """Seconds until the backlog is back under ``threshold`` at the measured drain rate."""
    if not rate or rate <= 0:
        return max_s
    return max(1, min(max_s, math.ceil((depth - threshold + 1) / rate)))


def check_backlog(backlog: Backlog, *, threshold: int, max_retry_s: int) -> None:
    depth = backlog.depth()
    if depth <= threshold:
        return
    wait = retry_after_s(depth, threshold, backlog.drain_rate(), max_retry_s)
    raise Overloaded(
        f"{depth} messages are waiting to be processed (limit {threshold}); retry in {wait}s",
        retry_after=wait,
    )
