"""Trigger use case: (re)compute the aggregates of a range in the background.

The range is widened to whole period buckets (in ``tz``) and handed to the
``aggregations`` queue; the worker runs :func:`analytics.application.reconcile.reconcile`
over it. Returns the task id, which the task-status endpoint follows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from analytics.application.queries import check_params, parse_aggregation_query
from analytics.domain.ports import AggregationJobs

GENERATE_PARAMS = ("start", "end", "tz")


@dataclass(frozen=True, slots=True)
class GenerateAccepted:
    task_id: str
    period: str
    tz: str
    start: str
    end: str
    status: str = "queued"


def request_generation(
    period: str, params: Mapping[str, object], *, jobs: AggregationJobs, max_buckets: int
) -> GenerateAccepted:
    # Generation recomputes every counter of the range: an event type would narrow
    # nothing, so it is refused like any other parameter this route does not take.
    check_params(params, GENERATE_PARAMS)
    q = parse_aggregation_query(period, params, max_buckets=max_buckets)
    start, end = q.buckets[0].start, q.buckets[-1].end
    task_id = jobs.enqueue_generate(q.period.value, start, end, q.tz_name)
    # In the zone asked for, as the aggregations' own bucket bounds are (QA: it said UTC).
    return GenerateAccepted(task_id, q.period.value, q.tz_name,
                            start.astimezone(q.tz).isoformat(), end.astimezone(q.tz).isoformat())  # fmt: skip
