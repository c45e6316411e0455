"""The HTTP API under gunicorn, configured from settings (``analytics api``)."""

from __future__ import annotations

from typing import Any

import falcon
from gunicorn.app.base import BaseApplication

from analytics.settings import Settings


def build_wsgi_app(settings: Settings) -> falcon.App:
    from analytics.bootstrap import bootstrap  # noqa: PLC0415
    from analytics.entrypoints.actors import register_actors  # noqa: PLC0415
    from analytics.entrypoints.api.app import create_app  # noqa: PLC0415
    from analytics.entrypoints.logs import configure_logging  # noqa: PLC0415

    configure_logging(settings.log_level, settings.log_format)
    container = bootstrap(settings)
    from analytics.entrypoints.telemetry import install  # noqa: PLC0415

    install(container.broker, settings, worker=False)
    register_actors(container)
    return create_app(container)


class GunicornServer(BaseApplication):  # type: ignore[misc]
    """gunicorn with options from settings; the app is built in each worker after fork."""

    def __init__(self, settings: Settings, options: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.options = {
            "bind": f"{settings.host}:{settings.port}",
            "workers": settings.web_workers,
            "threads": settings.web_threads,
            "worker_class": "gthread",
            "timeout": 30,
            "graceful_timeout": 20,
            "keepalive": 5,
            "max_requests": 0,
            "accesslog": None,
            "errorlog": "-",
            **(options or {}),
        }
        if settings.prometheus_multiproc_dir is not None and "child_exit" not in self.options:
            from analytics.entrypoints.metrics import make_child_exit  # noqa: PLC0415

            self.options["child_exit"] = make_child_exit(settings.prometheus_multiproc_dir)
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)
        if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 25.1
            # Several API servers on one machine (tests, benchmarks) must not share a socket.
            self.cfg.set("control_socket_disable", True)

    def load(self) -> falcon.App:
        return build_wsgi_app(self.settings)
