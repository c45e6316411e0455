"""The HTTP API under gunicorn, configured from settings (``analytics api``)."""

from __future__ import annotations

import gc
import runpy
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from gunicorn import glogging
from gunicorn.app.base import BaseApplication

from analytics.settings import Settings


def build_wsgi_app(settings: Settings) -> Callable[..., Iterable[bytes]]:
    answer_protocol_errors_as_problems(settings.hsts_seconds)
    from analytics.bootstrap import bootstrap  # noqa: PLC0415
    from analytics.entrypoints.actors import register_actors  # noqa: PLC0415
    from analytics.entrypoints.api.app import create_wsgi_app  # noqa: PLC0415
    from analytics.entrypoints.logs import configure_logging  # noqa: PLC0415

    configure_logging(settings.log_level, settings.log_format)
    container = bootstrap(settings.for_api())
    from analytics.entrypoints.telemetry import install  # noqa: PLC0415

    install(container.broker, settings, worker=False)
    register_actors(container)
    app = create_wsgi_app(container)
    # Everything built so far lives as long as the worker: move it out of the collector's
    # generations, so a full collection walks only what requests allocate since.
    gc.freeze()
    return app


def answer_protocol_errors_as_problems(hsts_seconds: int = 0) -> None:
    """Requests gunicorn refuses before the app sees them (a malformed ``Content-Length``,
    a header line over ``limit_request_field_size``, a bad request line) get a problem+json
    answer with a correlation id and the security headers, like every other error, instead
    of gunicorn's HTML page. gunicorn writes that page through ``gunicorn.util.write_error``
    and offers no hook for it; this replaces that function in the worker process (the
    status, reason and message stay gunicorn's). HSTS, when ``hsts_seconds`` is set, as on
    every other answer (QA: a 414 had every security header but that one).
    """
    from gunicorn import util  # noqa: PLC0415

    from analytics.entrypoints.api.middleware import security_headers  # noqa: PLC0415

    headers = "".join(f"{k}: {v}\r\n" for k, v in security_headers(hsts_seconds).items())
    if getattr(util.write_error, "_problem_json", None) == headers:
        return
    from http import HTTPStatus  # noqa: PLC0415

    import msgspec  # noqa: PLC0415

    from analytics.domain.ids import random_hex  # noqa: PLC0415

    def write_problem(sock: Any, status_int: int, reason: str, mesg: str) -> None:
        reason = HTTPStatus(status_int).phrase  # gunicorn's 501 said "Bad Request"
        correlation_id = random_hex(16)
        body = msgspec.json.encode({
            "type": "urn:problem:analytics:" + "-".join(reason.lower().split()),
            "title": reason, "status": status_int, "detail": mesg or reason,
            "correlation_id": correlation_id,
        })  # fmt: skip
        head = (
            f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/problem+json\r\nContent-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\n"
            f"X-Correlation-ID: {correlation_id}\r\n{headers}\r\n"
        )
        util.write_nonblock(sock, head.encode("latin-1") + body)

    write_problem._problem_json = headers  # type: ignore[attr-defined]
    util.write_error = write_problem


class StructlogGunicornLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's own lines (the master's start, worker boots and exits, timeouts, errors
    with their tracebacks) through the root handler that ``configure_logging`` installs,
    so they are JSON like every other line, instead of gunicorn's text format.

    Only when they go to stderr (``errorlog = "-"``, the default here) and no logging
    config of gunicorn's own is given: a config file that sends them elsewhere wins.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        if cfg.errorlog != "-" or cfg.logconfig_dict or cfg.logconfig_json or cfg.logconfig:
            return
        for handler in list(self.error_log.handlers):
            if getattr(handler, "_gunicorn", False):
                self.error_log.removeHandler(handler)
        self.error_log.propagate = True  # at gunicorn's own ``loglevel``, as before


class GunicornServer(BaseApplication):  # type: ignore[misc]
    """gunicorn with options from settings; the app is built in each worker after fork."""

    def __init__(self, settings: Settings, options: dict[str, Any] | None = None) -> None:
        from analytics.entrypoints.logs import configure_logging  # noqa: PLC0415

        configure_logging(settings.log_level, settings.log_format)  # the master's lines too
        self.settings = settings
        self.caller_options = dict(options or {})
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
            "logger_class": StructlogGunicornLogger,
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
        if self.settings.gunicorn_config is not None:
            self.apply_config_file(self.settings.gunicorn_config)

    def apply_config_file(self, path: Path) -> None:
        """Apply a gunicorn config file over the defaults, below explicit choices.

        A value in the file replaces the default derived from settings; a setting the
        operator set explicitly (present in the environment, or a CLI flag) and any option
        passed to this class by its caller keep their value. ``bind`` always comes from
        ``ANALYTICS_HOST``/``ANALYTICS_PORT``.
        """
        explicit = set(self.caller_options) | {"bind"}
        explicit |= {
            opt for field, opt in SETTING_OPTIONS.items() if field in self.settings.model_fields_set
        }
        for key, value in load_config_file(path).items():
            if key in self.cfg.settings and key not in explicit:
                self.cfg.set(key, value)

    def load(self) -> Callable[..., Iterable[bytes]]:
        return build_wsgi_app(self.settings)


# Settings fields that become gunicorn options: when set explicitly they win over a config file.
SETTING_OPTIONS = {"web_workers": "workers", "web_threads": "threads"}


def load_config_file(path: Path) -> dict[str, Any]:
    """The gunicorn settings a config file defines (its lower-case public names)."""
    namespace = runpy.run_path(str(path), run_name="__config__")
    return {k: v for k, v in namespace.items() if not k.startswith("_") and k.islower()}
