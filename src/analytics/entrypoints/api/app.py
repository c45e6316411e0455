"""The Falcon application factory: ``create_app(container)``, never an import-time global."""

from __future__ import annotations

import falcon

from analytics.application.ingest import IngestDeps
from analytics.bootstrap import Container
from analytics.entrypoints.api import resources
from analytics.entrypoints.api.middleware import (
    AccessLogMiddleware,
    CorrelationMiddleware,
    SecurityHeadersMiddleware,
)
from analytics.entrypoints.api.http_cache import HttpCacheMiddleware
from analytics.entrypoints.api.problems import install_error_handlers
from analytics.entrypoints.api.search import SearchResource
from analytics.entrypoints.api.tasks import TaskStatusResource


def create_app(container: Container) -> falcon.App:
    s = container.settings
    app = falcon.App(
        middleware=[CorrelationMiddleware(), SecurityHeadersMiddleware(), AccessLogMiddleware()],
    )
    app.req_options.strip_url_path_trailing_slash = True
    app.add_middleware(HttpCacheMiddleware(s))  # ETag, Cache-Control, 304 (README, "Resilience")
    install_error_handlers(app)
    deps = IngestDeps(
        queue=container.task_queue,
        clock=container.clock,
        new_id=container.new_id,
        limits=container.limits,
    )
    app.add_route("/api/v1/analytics/events", resources.EventsResource(deps, s.max_body_bytes))
    app.add_route(
        "/api/v1/analytics/events/batch",
        resources.BatchResource(deps, s.max_body_bytes, s.max_batch_events),
    )
    app.add_route("/analytics/events", resources.LegacyEventsResource(deps, s.max_body_bytes))
    app.add_route("/health", resources.HealthResource())
    app.add_route(
        "/api/v1/analytics/events/search",
        SearchResource(container.event_repo, container.cursor_secret),
    )
    if container.task_status is not None:
        app.add_route(
            "/api/v1/analytics/tasks/{task_id}/status", TaskStatusResource(container.task_status)
        )
    return app
