"""The Falcon application factory: ``create_app(container)``, never an import-time global."""

from __future__ import annotations

import falcon

from analytics.application.ingest import IngestDeps
from analytics.bootstrap import Container
from analytics.entrypoints.api import observability, resources
from analytics.entrypoints.api.http_cache import HttpCacheMiddleware
from analytics.entrypoints.api.ingest_lane import IngestLane, WSGIApp
from analytics.entrypoints.api.middleware import (
    AccessLogMiddleware,
    CorrelationMiddleware,
    DrainUnreadBodyMiddleware,
    HeadAsGetMiddleware,
    SecurityHeadersMiddleware,
)
from analytics.entrypoints.api.problems import install_error_handlers
from analytics.entrypoints.api.search import EventResource, SearchResource
from analytics.entrypoints.api.security import AuthMiddleware, CORSMiddleware
from analytics.entrypoints.api.tasks import TaskStatusResource


def add_contract_routes(app: falcon.App, max_batch_events: int) -> None:
    """The OpenAPI document and the docs page (built lazily from the finished router)."""
    from analytics.entrypoints.api import docs  # noqa: PLC0415
    from analytics.entrypoints.api.openapi import build_openapi  # noqa: PLC0415

    app.add_route(
        "/api/v1/openapi.json",
        docs.OpenAPIResource(lambda: build_openapi(app, max_batch_events=max_batch_events)),
    )
    app.add_route("/docs", docs.DocsPageResource())
    app.add_route("/docs/static/{name}", docs.DocsStaticResource())


def create_wsgi_app(container: Container) -> WSGIApp:
    """What gunicorn serves: the Falcon app, with the single-event ingest lane in front of
    it (``ANALYTICS_INGEST_LANE``, on by default; off while slow requests are profiled,
    which only Falcon's middleware sees)."""
    deps = _ingest_deps(container)  # one for both: one count of event-type series
    app = create_app(container, ingest=deps)
    s = container.settings
    if not s.ingest_lane or s.profile_slow_ms > 0:
        return app
    return IngestLane(
        app,
        deps,
        auth=AuthMiddleware(s, container.api_keys, container.rate_limiter, container.backlog),
        security_headers=SecurityHeadersMiddleware(hsts_seconds=s.hsts_seconds).headers,
        metrics=observability.RequestMetricsMiddleware(),
        access_log=AccessLogMiddleware(),
        max_body_bytes=s.max_body_bytes,
        cors=bool(s.cors_origin_list),
    )


def _ingest_deps(container: Container) -> IngestDeps:
    return IngestDeps(
        queue=observability.MeteredTaskQueue(
            container.task_queue, event_types=container.settings.metrics_event_types
        ),
        clock=container.clock,
        new_id=container.new_id,
        limits=container.limits,
    )


def create_app(container: Container, *, ingest: IngestDeps | None = None) -> falcon.App:
    s = container.settings
    # CORS only when origins are configured: without them no answer depends on Origin
    # (no Access-Control-* header is ever sent), so there is nothing to vary on, and
    # every request (ingest included) is spared the two hooks and the Vary header.
    cors = [CORSMiddleware(s.cors_origin_list)] if s.cors_origin_list else []
    app = falcon.App(
        middleware=[
            # Its response hook runs last. A body over the limit is read too, up to the
            # decompressed cap: a client sending 2 MB learns "413" on a connection it keeps.
            DrainUnreadBodyMiddleware(max(s.max_body_bytes, s.max_decompressed_bytes)),
            HeadAsGetMiddleware(),
            CorrelationMiddleware(),
            SecurityHeadersMiddleware(hsts_seconds=s.hsts_seconds),
            *cors,
            AuthMiddleware(s, container.api_keys, container.rate_limiter, container.backlog),
            AccessLogMiddleware(),
        ],
    )
    app.req_options.strip_url_path_trailing_slash = True
    app.add_middleware(HttpCacheMiddleware(s))  # ETag, Cache-Control, 304 (README, "Resilience")
    install_error_handlers(app)
    deps = ingest or _ingest_deps(container)
    app.add_route("/api/v1/analytics/events", resources.EventsResource(deps, s.max_body_bytes))
    app.add_route(
        "/api/v1/analytics/events/batch",
        resources.BatchResource(deps, s.max_body_bytes, s.max_batch_events),
    )
    app.add_route("/analytics/events", resources.LegacyEventsResource(deps, s.max_body_bytes))
    app.add_route("/health", resources.HealthResource())
    if container.dead_letters is not None:  # ops: dead letters (admin scope)
        from analytics.entrypoints.api.admin import add_admin_routes  # noqa: PLC0415

        add_admin_routes(app, container.dead_letters, s.max_body_bytes)
    add_contract_routes(app, s.max_batch_events)
    add_query_routes(app, container)
    app.add_route(
        "/api/v1/analytics/events/search",
        SearchResource(container.event_repo, container.cursor_secret),
    )
    # Literal segments win in Falcon's router: /events/search and /events/batch stay theirs.
    app.add_route("/api/v1/analytics/events/{event_id}", EventResource(container.event_repo))
    if container.task_status is not None:
        app.add_route(
            "/api/v1/analytics/tasks/{task_id}/status", TaskStatusResource(container.task_status)
        )
    observability.install(app, container)
    return app


def add_query_routes(app: falcon.App, container: Container) -> None:
    """Aggregations, their background generation, and the dashboard (issue 3)."""
    from analytics.bootstrap import query_deps  # noqa: PLC0415
    from analytics.entrypoints.api import query_resources as q  # noqa: PLC0415

    s = container.settings
    assert container.aggregates is not None and container.aggregation_jobs is not None
    deps = query_deps(container)
    app.add_route("/api/v1/analytics/aggregations/{period}", q.AggregationsResource(deps))
    app.add_route(
        "/api/v1/analytics/aggregations/{period}/generate",
        q.GenerateAggregationsResource(container.aggregation_jobs, s.aggregation_max_buckets),
    )
    app.add_route("/api/v1/analytics/dashboard/metrics", q.DashboardResource(deps))
