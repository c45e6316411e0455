"""Dramatiq actors: decode the payload, call a use case. Declared on the container's broker.

Queues (see README, "Operations"):

| actor            | queue          | what it does                         |
|------------------|----------------|--------------------------------------|
| process_events   | high_priority  | store a group of events exactly once |
| generate_aggregations | aggregations | reconcile (recompute + repair) a range |
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import dramatiq
import structlog

from analytics.adapters import codec
from analytics.adapters.dramatiq_jobs import GENERATE_AGGREGATIONS
from analytics.adapters.dramatiq_queue import PROCESS_EVENTS
from analytics.application.reconcile import reconcile
from analytics.application.store_events import store_events
from analytics.bootstrap import Container

log = structlog.get_logger("analytics.worker")


def register_actors(container: Container) -> dict[str, dramatiq.Actor[Any, Any]]:
    """Declare every actor on ``container.broker`` and return them by name."""
    broker = container.broker
    from analytics.adapters.deferral import deferring, install  # noqa: PLC0415

    install(  # an open storage breaker defers messages (README, "Resilience")
        broker,
        base_s=container.settings.breaker_reset_timeout_s,
        max_s=container.settings.breaker_defer_max_s,
    )

    @deferring
    def process_events(payload: str) -> dict[str, int]:
        events = codec.decode_events(payload)
        result = store_events(
            events,
            repo=container.event_repo,
            aggregates=container.aggregates,
            cache=container.cache,
        )
        log.info(
            "events stored",
            received=result.received,
            stored=result.stored,
            duplicates=result.duplicates,
            correlation_ids=sorted({e.correlation_id for e in events})[:20],
        )
        return {"stored": result.stored, "duplicates": result.duplicates}

    def generate_aggregations(period: str, start: str, end: str, tz: str) -> dict[str, Any]:
        assert container.aggregates is not None
        report = reconcile(
            datetime.fromisoformat(start),
            datetime.fromisoformat(end),
            repo=container.event_repo,
            aggregates=container.aggregates,
            cache=container.cache,
        )
        log.info("aggregations generated", period=period, tz=tz, **report.as_dict())
        return {"period": period, "tz": tz, **report.as_dict()}

    actors = {
        PROCESS_EVENTS: dramatiq.actor(
            process_events,
            actor_name=PROCESS_EVENTS,
            queue_name="high_priority",
            broker=broker,
            max_retries=10,
            min_backoff=500,
            max_backoff=60_000,
            time_limit=120_000,
        ),
    }
    actors[GENERATE_AGGREGATIONS] = dramatiq.actor(
        generate_aggregations,
        actor_name=GENERATE_AGGREGATIONS,
        queue_name="aggregations",
        broker=broker,
        max_retries=3,
        min_backoff=1_000,
        max_backoff=60_000,
        time_limit=30 * 60_000,
    )
    return actors
