"""The seed's stack shape, for the "10x" comparison: Flask + pydantic v2 + Celery.

The single-event endpoint as the seed builds it: a pydantic v2 model with typed identifiers,
field and model validators and computed fields (``event_day``, ``event_hour``,
``total_value``), then one Celery ``send_task`` to Redis per request, answered 202 with the
task id. It runs under the same gunicorn settings as the service (gthread workers x
threads, from the same environment), so only the stack differs.

    python bench/seed_stack.py PORT REDIS_URL [ANALYTICS_WEB_WORKERS=2 ...]

No worker consumes the queue: like the service's ingest phases, it measures the API.
"""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from pydantic import (  # noqa: E402
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    computed_field,
    field_validator,
    model_validator,
)

from analytics.entrypoints.wsgi import GunicornServer  # noqa: E402
from analytics.settings import Settings  # noqa: E402

Ident = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")
]
UserId = Ident
SessionId = Ident
ProductId = Ident
EventType = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")
]
CURRENCIES = frozenset({"EUR", "USD", "GBP", "CHF", "JPY"})


class AnalyticsEvent(BaseModel):
    """The seed's event model (pydantic v2, computed fields, cross-field validation)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    event_type: EventType
    user_id: UserId
    session_id: SessionId
    product_id: ProductId | None = None
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    price: Decimal | None = Field(None, ge=0, max_digits=18, decimal_places=6)
    quantity: int = Field(1, ge=1, le=1_000_000)
    currency: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("timestamp needs a UTC offset")
        value = value.astimezone(UTC)
        if value > datetime.now(UTC) + timedelta(minutes=5):
            raise ValueError("timestamp is in the future")
        return value

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str | None) -> str | None:
        if value is not None and value not in CURRENCIES:
            raise ValueError("unknown ISO 4217 currency")
        return value

    @model_validator(mode="after")
    def _cross_fields(self) -> AnalyticsEvent:
        if self.event_type == "purchase" and self.product_id is None:
            raise ValueError("a purchase needs product_id")
        if self.price is not None and self.currency is None:
            raise ValueError("a price needs a currency")
        return self

    @computed_field  # type: ignore[prop-decorator]
    @property
    def event_day(self) -> str:
        return self.timestamp.date().isoformat()

    @computed_field  # type: ignore[prop-decorator]
    @property
    def event_hour(self) -> int:
        return self.timestamp.hour

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_value(self) -> Decimal | None:
        return None if self.price is None else self.price * self.quantity


def create_app(redis_url: str) -> Any:
    """The Flask app and its Celery client, built in the gunicorn worker (after fork)."""
    from celery import Celery  # noqa: PLC0415
    from flask import Flask, jsonify, request  # noqa: PLC0415

    celery = Celery("analytics", broker=redis_url)
    celery.conf.update(task_serializer="json", broker_connection_retry_on_startup=True)
    app = Flask("seed_stack")

    @app.post("/api/v1/analytics/events")
    def track_event() -> Any:
        try:
            event = AnalyticsEvent.model_validate(request.get_json(force=True))
        except ValidationError as exc:
            return jsonify(
                {"error": "validation_error", "details": exc.errors(include_url=False)}
            ), 400
        payload = event.model_dump(mode="json")
        task = celery.send_task("tasks.process_event", args=[payload], queue="high_priority")
        return jsonify(
            {
                "status": "accepted",
                "event_id": payload["event_id"],
                "background_task_id": task.id,
                "event_day": payload["event_day"],
                "event_hour": payload["event_hour"],
                "total_value": payload["total_value"],
            }
        ), 202

    @app.get("/health")
    def health() -> Any:
        return jsonify({"status": "ok"})

    return app


class SeedStackServer(GunicornServer):
    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.redis_url = redis_url
        super().__init__(settings)

    def load(self) -> Any:
        return create_app(self.redis_url)


if __name__ == "__main__":
    port, redis_url, *pairs = sys.argv[1:]
    settings = Settings.from_env({"ANALYTICS_PORT": port, **dict(p.split("=", 1) for p in pairs)})
    SeedStackServer(settings, redis_url).run()
