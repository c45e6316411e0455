"""structlog configuration: JSON lines, correlation id from a context variable.

stdlib logging (dramatiq, gunicorn) is routed through the same processors so every line
a process writes is JSON.
"""

from __future__ import annotations

import logging
import sys

import structlog

_SECRET_KEYS = ("authorization", "x-api-key", "api_key", "password", "secret", "token")


def _redact(_: object, __: str, event_dict: dict[str, object]) -> dict[str, object]:
    for key in list(event_dict):
        if any(s in key.lower() for s in _SECRET_KEYS):
            event_dict[key] = "[redacted]"
    return event_dict


class _DropResultWarning(logging.Filter):
    """Dramatiq warns on every message whose actor returns a value without the Results
    middleware; our actors' return values feed the task-metrics middleware instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.name.startswith("dramatiq.worker")
            and "returned a value that is not None" in str(record.msg)
        )


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    handler.addFilter(_DropResultWarning())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
