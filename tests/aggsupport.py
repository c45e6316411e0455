"""Helpers for the aggregation tests: events built directly, without the ingest path."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from analytics.domain.events import Event


def make_event(
    ts: datetime,
    *,
    event_type: str = "page_view",
    user: str = "u1",
    session: str | None = "s1",
    product: str | None = None,
    price: str | None = None,
    quantity: int = 1,
    currency: str | None = None,
    event_id: uuid.UUID | None = None,
    metadata: dict[str, str] | None = None,
) -> Event:
    ts = ts.astimezone(UTC)
    p = Decimal(price) if price is not None else None
    return Event(
        event_id=event_id or uuid.uuid4(),
        event_type=event_type,
        user_id=user,
        session_id=session,
        product_id=product,
        metadata=metadata or {},
        timestamp=ts,
        received_at=ts,
        event_day=ts.strftime("%Y-%m-%d"),
        event_hour=ts.hour,
        price=p,
        quantity=quantity,
        currency=currency if p is not None else None,
        total_value=p * quantity if p is not None else None,
    )


def purchase(ts: datetime, *, user: str = "u1", session: str = "s1", product: str = "p1",
             price: str = "10.00", quantity: int = 1, currency: str = "EUR",
             event_id: uuid.UUID | None = None) -> Event:  # fmt: skip
    return make_event(
        ts, event_type="purchase", user=user, session=session, product=product,
        price=price, quantity=quantity, currency=currency, event_id=event_id,
    )  # fmt: skip
