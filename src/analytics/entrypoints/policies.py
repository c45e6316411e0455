"""Every actor's queue, retry policy and time limit, in one table (README: "Operations").

Dramatiq's defaults retry 20 times with backoff up to 7 days; ours are bounded per actor.
Backoff is exponential with jitter: attempt ``k`` waits ``min_backoff * 2**k`` times a
random factor in [1, 2), capped at ``max_backoff`` (then 50-100 % of it). When the retries
are used up, or the actor raises :class:`~analytics.domain.errors.PermanentError` (a
payload that can never succeed), the message goes to its queue's dead-letter queue.

Time limits are above the client timeouts the actor's I/O can block on (Redis socket
timeout ``redis_timeout_s``, SQLite busy timeout 30 s, botocore connect/read timeouts),
because Dramatiq's ``TimeLimit`` raises an asynchronous exception that cannot interrupt a
blocking socket call: the client's own timeout must fire first. A single hung call is cut
by its client timeout; the time limit bounds the whole task.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from analytics.domain.errors import PermanentError

if TYPE_CHECKING:
    from analytics.settings import Settings


@dataclass(frozen=True, slots=True)
class ActorPolicy:
    """Where an actor runs and how its failures are retried (milliseconds)."""

    queue: str
    max_retries: int
    min_backoff_ms: int
    max_backoff_ms: int
    time_limit_ms: int
    purpose: str

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``dramatiq.actor``."""
        return {
            "queue_name": self.queue,
            "max_retries": self.max_retries,
            "min_backoff": self.min_backoff_ms,
            "max_backoff": self.max_backoff_ms,
            "time_limit": self.time_limit_ms,
            "throws": (PermanentError,),
        }

    def worst_case_retry_window_ms(self) -> int:
        """Upper bound of the total backoff before a message is dead-lettered."""
        total = 0
        for attempt in range(self.max_retries):
            total += min(self.min_backoff_ms * 2**attempt * 2, self.max_backoff_ms)
        return total


#: The one table. Names are Dramatiq actor names; queues are the documented ones.
POLICIES: dict[str, ActorPolicy] = {
    "process_events": ActorPolicy(
        "high_priority", 10, 1_000, 300_000, 120_000, "store a group of events exactly once"
    ),
    "generate_aggregations": ActorPolicy(
        "aggregations", 3, 1_000, 60_000, 1_800_000, "reconcile (recompute + repair) a range"
    ),
    "warm_dashboard_cache": ActorPolicy(
        "aggregations", 2, 1_000, 30_000, 60_000, "warm the dashboard and closed-bucket caches"
    ),
    "publish_notifications": ActorPolicy(
        "notifications", 10, 1_000, 300_000, 60_000, "publish new events of configured types (SNS)"
    ),
    "purge_events_before": ActorPolicy(
        "maintenance", 3, 60_000, 3_600_000, 1_800_000, "retention: delete old raw events"
    ),
    "check_dead_letters": ActorPolicy(
        "maintenance", 0, 1_000, 1_000, 60_000, "measure dead-letter depths for the metric"
    ),
}

#: Used for an actor missing from the table (a new actor should get its own row).
DEFAULT_POLICY = ActorPolicy("maintenance", 3, 5_000, 300_000, 300_000, "(default)")


def policy_for(name: str, settings: Settings | None = None) -> ActorPolicy:
    """The table's policy for ``name``, with the settings' overrides (tests, operators)."""
    policy = POLICIES.get(name, DEFAULT_POLICY)
    if settings is None:
        return policy
    if settings.retry_max_retries is not None:
        policy = replace(policy, max_retries=settings.retry_max_retries)
    if settings.retry_min_backoff_ms is not None:
        policy = replace(policy, min_backoff_ms=settings.retry_min_backoff_ms)
    if settings.retry_max_backoff_ms is not None:
        policy = replace(policy, max_backoff_ms=settings.retry_max_backoff_ms)
    time_limit = settings.time_limit_overrides.get(name)
    if time_limit is not None:
        policy = replace(policy, time_limit_ms=time_limit)
    return policy


def time_limits_too_short(settings: Settings) -> list[str]:
    """The actors whose time limit (the table's or an override) is not above the longest
    a client call can block (``Settings.longest_client_block_s``): Dramatiq's time limit
    cannot interrupt that call, so the task would be killed while its call still runs.
    Overrides are refused by the settings themselves; this covers the table's defaults
    against settings that lengthen the calls (more AWS tries, longer timeouts)."""
    floor_ms = settings.longest_client_block_s * 1000
    limits = {name: policy_for(name, settings).time_limit_ms for name in POLICIES}
    return [f"{name}={ms}" for name, ms in limits.items() if ms <= floor_ms]


def actor_options(name: str, settings: Settings | None = None) -> dict[str, Any]:
    """``dramatiq.actor(fn, actor_name=name, broker=b, **actor_options(name, settings))``."""
    return {"actor_name": name, **policy_for(name, settings).options()}


def policy_table_markdown() -> str:
    """The README's retry policy table, generated from :data:`POLICIES` (a test compares)."""
    lines = [
        (
            "| actor | queue | max retries | min backoff | max backoff | time limit"
            " | retry window (worst case) | purpose |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, p in POLICIES.items():
        lines.append(
            f"| `{name}` | `{p.queue}` | {p.max_retries} | {_ms(p.min_backoff_ms)} | "
            f"{_ms(p.max_backoff_ms)} | {_ms(p.time_limit_ms)} | "
            f"{_window(p.worst_case_retry_window_ms())} | {p.purpose} |"
        )
    return "\n".join(lines)


def _window(ms: int) -> str:
    if ms == 0:
        return "none"
    return (
        f"~{max(1, round(ms / 60_000))} min" if ms >= 60_000 else f"~{max(1, round(ms / 1000))} s"
    )


def _ms(ms: int) -> str:
    if ms % 3_600_000 == 0:
        return f"{ms // 3_600_000} h"
    if ms % 60_000 == 0:
        return f"{ms // 60_000} min"
    if ms % 1000 == 0:
        return f"{ms // 1000} s"
    return f"{ms} ms"
