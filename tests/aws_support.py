"""Helpers for tests that talk to the moto server: settings, clients, call counting."""

from __future__ import annotations

from collections import Counter
from typing import Any

from analytics.settings import Settings


def aws_settings(moto: Any, names: dict[str, str], **extra: str) -> Settings:
    env = {
        **moto.env(),
        **names,
        "ANALYTICS_STORAGE": "dynamodb",
        "ANALYTICS_RETENTION_DAYS": "3650",
        **extra,
    }  # fixed test dates stay live
    return Settings.from_env(env)


class CallCounter:
    """Counts the API operations a botocore client makes (an event hook: observes only)."""

    def __init__(self, client: Any) -> None:
        self.calls: Counter[str] = Counter()
        client.meta.events.register("before-call.*.*", self._count)

    def _count(self, model: Any, **_: Any) -> None:
        self.calls[model.name] += 1

    def reset(self) -> None:
        self.calls.clear()


def stubbed_dynamodb_client() -> Any:
    """A DynamoDB client for botocore's ``Stubber``: fake credentials, no endpoint of its own,
    and one attempt per call (the Stubber answers each attempt; the tests drive *our* retry
    loops, not botocore's)."""
    import boto3  # noqa: PLC0415
    from botocore.config import Config  # noqa: PLC0415

    return boto3.session.Session().client(
        "dynamodb", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )  # fmt: skip


def make_event(
    n: int = 0,
    *,
    at: Any = None,
    event_type: str = "page_view",
    user_id: str | None = None,
    session_id: str | None = None,
    product_id: str | None = None,
    price: str | None = None,
    currency: str | None = None,
    correlation_id: str = "corr-1",
    event_id: Any = None,
) -> Any:
    """A valid Event built through the domain's own rules."""
    import uuid  # noqa: PLC0415
    from datetime import UTC, datetime, timedelta  # noqa: PLC0415
    from decimal import Decimal  # noqa: PLC0415

    from analytics.domain.events import EventIn  # noqa: PLC0415
    from analytics.domain.validation import build_event  # noqa: PLC0415

    at = at or datetime(2026, 11, 27, 12, 0, tzinfo=UTC) + timedelta(seconds=n)
    ein = EventIn(
        event_type=event_type,
        user_id=user_id or f"user-{n % 7}",
        session_id=session_id or f"sess-{n % 11}",
        product_id=product_id,
        event_id=event_id or uuid.uuid4(),
        timestamp=at,
        price=Decimal(price) if price is not None else None,
        currency=currency,
    )
    return build_event(ein, received_at=at, correlation_id=correlation_id, new_id=uuid.uuid4)


_CLIENTS: dict[str, Any] = {}


def dynamodb_stores(moto: Any, names: dict[str, str] | None = None) -> tuple[Any, Any]:
    """A fresh DynamoDB event repository and aggregate store on tables of their own, made
    by ``analytics init``'s code and built as the composition root builds them.

    One boto3 client per moto server is shared (building a client costs ~0.1 s, and
    hypothesis asks for a fresh store per example)."""
    import uuid  # noqa: PLC0415

    from analytics.adapters.aws import dynamodb_client  # noqa: PLC0415
    from analytics.adapters.dynamodb_aggregates import DynamoDBAggregateStore  # noqa: PLC0415
    from analytics.adapters.dynamodb_events import DynamoDBEventRepository  # noqa: PLC0415
    from analytics.adapters.dynamodb_schema import ensure_table, required_tables  # noqa: PLC0415
    from analytics.domain.clock import SystemClock  # noqa: PLC0415

    tag = uuid.uuid4().hex[:10]
    names = names or {"ANALYTICS_EVENTS_TABLE": f"events-{tag}",
                      "ANALYTICS_AGGREGATES_TABLE": f"aggregates-{tag}"}  # fmt: skip
    settings = aws_settings(moto, {k: v for k, v in names.items() if "TOPIC" not in k})
    client = _CLIENTS.get(moto.endpoint_url)
    if client is None:
        client = _CLIENTS[moto.endpoint_url] = dynamodb_client(settings)
    for spec in required_tables(settings):
        ensure_table(client, spec)
    repo = DynamoDBEventRepository(
        client, settings.events_table, clock=SystemClock(),
        directory_table=settings.aggregates_table, shards=settings.dynamodb_shards,
        retention_days=settings.retention_days,
    )  # fmt: skip
    return repo, DynamoDBAggregateStore(client, settings.aggregates_table,
                                        shards=settings.aggregate_shards)  # fmt: skip
