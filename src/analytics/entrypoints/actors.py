"""Dramatiq actors: decode the payload, call a use case. Declared on the container's broker.

Queues (see README, "Operations"):

| actor            | queue          | what it does                         |
|------------------|----------------|--------------------------------------|
| process_events   | high_priority  | store a group of events exactly once |
| publish_notifications | notifications | publish new events of configured types (SNS) |
| purge_events_before | maintenance | retention: delete raw events before a cutoff |
| check_dead_letters  | maintenance | measure dead-letter depths for the metric |
| warm_dashboard_cache | aggregations | precompute dashboard and closed aggregation buckets |
| generate_aggregations | aggregations | reconcile (recompute + repair) a range |

Retry policies and time limits: ``entrypoints/policies.py`` (one table).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import dramatiq
import structlog

from analytics.adapters import codec
from analytics.adapters.dramatiq_jobs import GENERATE_AGGREGATIONS
from analytics.adapters.dramatiq_queue import (
    PROCESS_EVENTS,
    PUBLISH_NOTIFICATIONS,
    notifications_message,
)
from analytics.application.notify import announce_unstored, publish_notifications
from analytics.application.reconcile import reconcile
from analytics.application.store_events import SharedCommit, invalidate, store_events
from analytics.bootstrap import Container, query_deps
from analytics.entrypoints.policies import actor_options

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

    def store(events: Any, cache: Any = container.cache, precounted: Any = None) -> Any:
        return store_events(
            events,
            repo=container.event_repo,
            aggregates=container.aggregates,
            cache=cache,
            uow=container.uow,
            precounted=precounted,
        )

    # The worker's threads share one store call (one fsynced transaction) per round; the
    # round is collected inside its transaction (on SQLite: once the writer lock is ours)
    # and the cache is invalidated after its commit.
    uow = container.uow
    shared = (
        SharedCommit(
            lambda events, precounted: store(events, cache=None, precounted=precounted),
            begin=uow.atomic if uow is not None else None,
            after=lambda result: invalidate(result, cache=container.cache),
            counting=container.aggregates is not None,
        )
        if container.settings.worker_group_commit
        else None
    )

    @deferring
    def process_events(payload: list[Any] | str) -> dict[str, int]:
        events = _decode_events(payload)
        if container.notifier is not None:  # before the store: at least once, never lost
            announce_unstored(
                events,
                repo=container.event_repo,
                event_types=container.settings.notify_event_types,
                enqueue=lambda chosen: broker.enqueue(notifications_message(chosen)),
            )
        result = shared.submit(events) if shared is not None else store(events)
        log.info(
            "events stored",
            received=result.received,
            stored=result.stored,
            duplicates=result.duplicates,
            correlation_ids=sorted({e.correlation_id for e in events})[:20],
        )
        return {"stored": result.stored, "duplicates": result.duplicates}

    def publish_notifications_actor(payload: list[Any] | str) -> int:
        events = _decode_events(payload)
        if container.notifier is None:
            log.warning("notifications off: no topic configured", dropped=len(events))
            return 0
        sent = publish_notifications(events, notifier=container.notifier)
        log.info("notifications published", count=sent)
        return sent

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
            broker=broker,
            **actor_options(PROCESS_EVENTS, container.settings),
        ),
        PUBLISH_NOTIFICATIONS: dramatiq.actor(
            publish_notifications_actor,
            broker=broker,
            **actor_options(PUBLISH_NOTIFICATIONS, container.settings),
        ),
    }
    actors[GENERATE_AGGREGATIONS] = dramatiq.actor(
        generate_aggregations,
        broker=broker,
        **actor_options(GENERATE_AGGREGATIONS, container.settings),  # 3 tries, 1 s-1 min, 30 min
    )
    actors.update(register_maintenance_actors(container))
    return actors


def _decode_events(payload: object) -> list[Any]:
    """A payload that does not decode can never succeed: straight to the dead letters.

    Takes both forms (``codec.events_from_arg``): a JSON array (this build's messages) and
    the array as JSON text (messages queued by older builds).
    """
    import msgspec  # noqa: PLC0415

    from analytics.domain.errors import PermanentError  # noqa: PLC0415
    from analytics.domain.validation import JSON_DECODE_ERRORS  # noqa: PLC0415

    try:
        return codec.events_from_arg(payload)
    except TypeError as exc:
        raise PermanentError(str(exc)) from exc
    except (*JSON_DECODE_ERRORS, msgspec.ValidationError) as exc:
        raise PermanentError(f"payload does not decode: {exc}") from exc


def register_maintenance_actors(container: Container) -> dict[str, dramatiq.Actor[Any, Any]]:
    """Operations actors: retention and the dead-letter check on ``maintenance`` (run by
    ``analytics worker --queues maintenance``) and the cache warm-up on ``aggregations``."""
    from datetime import datetime  # noqa: PLC0415

    from analytics.application.dead_letters import measure_dead_letters  # noqa: PLC0415
    from analytics.application.retention import purge_events_before  # noqa: PLC0415
    from analytics.domain.errors import PermanentError  # noqa: PLC0415

    broker = container.broker

    def purge_events_before_actor(cutoff: str) -> dict[str, object]:
        try:
            when = datetime.fromisoformat(cutoff)
        except (TypeError, ValueError) as exc:
            raise PermanentError(f"cutoff {cutoff!r} is not an ISO 8601 time") from exc
        if when.tzinfo is None:
            raise PermanentError(f"cutoff {cutoff!r} has no UTC offset")
        deleted = purge_events_before(when, repo=container.event_repo)
        log.info("retention purge", cutoff=cutoff, deleted=deleted)
        return {"cutoff": cutoff, "deleted": deleted}

    def check_dead_letters() -> dict[str, int]:
        if container.dead_letters is None:
            return {}
        depths = measure_dead_letters(dlq=container.dead_letters, now=container.clock.now())
        log.info("dead-letter depths", **depths)
        return depths

    def warm_dashboard_cache() -> dict[str, int]:
        from analytics.application.warmup import warm_caches  # noqa: PLC0415

        result = warm_caches(deps=query_deps(container))
        log.info("caches warmed", **result.as_dict())
        return result.as_dict()

    return {
        "warm_dashboard_cache": dramatiq.actor(
            warm_dashboard_cache,
            broker=broker,
            **actor_options("warm_dashboard_cache", container.settings),
        ),
        "purge_events_before": dramatiq.actor(
            purge_events_before_actor,
            broker=broker,
            **actor_options("purge_events_before", container.settings),
        ),
        "check_dead_letters": dramatiq.actor(
            check_dead_letters,
            broker=broker,
            **actor_options("check_dead_letters", container.settings),
        ),
    }
