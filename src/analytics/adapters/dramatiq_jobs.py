"""AggregationJobs port over Dramatiq: one ``generate_aggregations`` message per request."""

from __future__ import annotations

from datetime import datetime

import dramatiq

from analytics.domain.errors import QueueUnavailable

GENERATE_AGGREGATIONS = "generate_aggregations"
AGGREGATIONS_QUEUE = "aggregations"


class DramatiqAggregationJobs:
    def __init__(self, broker: dramatiq.Broker) -> None:
        self.broker = broker

    def enqueue_generate(self, period: str, start: datetime, end: datetime, tz: str) -> str:
        message: dramatiq.Message[object] = dramatiq.Message(
            queue_name=AGGREGATIONS_QUEUE,
            actor_name=GENERATE_AGGREGATIONS,
            args=(period, start.isoformat(), end.isoformat(), tz),
            kwargs={},
            options={},
        )
        try:
            return self.broker.enqueue(message).message_id
        except Exception as exc:
            raise QueueUnavailable(
                f"the broker is unavailable: {exc}", public="the broker is unavailable; nothing was queued"
            ) from exc
