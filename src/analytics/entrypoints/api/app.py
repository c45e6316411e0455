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
from analytics.entrypoints.api.problems import install_error_handlers
from analytics.entrypoints.api.search import SearchResource
from analytics.entrypoints.api.tasks import TaskStatusResource


def create_app(container: Container) -> falcon.App:
    s = container.settings
    app = falcon.App(
        middleware=[CorrelationMiddleware(), SecurityHeadersMiddleware(), AccessLogMiddleware()],
    )
    app.req_options.strip_url_path_trailing_slash = True
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
    if container.dead_letters is not None:  # ops: dead letters (admin scope)
        from analytics.entrypoints.api.admin import add_admin_routes  # noqa: PLC0415

        add_admin_routes(app, container.dead_letters, s.max_body_bytes)
    app.add_route(
        "/api/v1/analytics/events/search",
        SearchResource(container.event_repo, container.cursor_secret),
    )
    if container.task_status is not None:
        app.add_route(
            "/api/v1/analytics/tasks/{task_id}/status", TaskStatusResource(container.task_status)
        )
    return app
