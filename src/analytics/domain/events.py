"""Event models: what a client sends (``EventIn``), and the validated ``Event`` we keep.

msgspec structs on the hot path: field rules (types, lengths, patterns, bounds) are
declared once here, enforced by the decoder, and exported to the OpenAPI document.
Cross-field rules and computed fields live in :mod:`analytics.domain.validation`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

import msgspec

# Why some structs say ``gc=False``: a batch of 100 allocates hundreds of objects that
# live until their message is in Redis; tracked by the cycle collector, they trigger and
# survive young collections, get promoted, and make full collections (which walk every
# object of the process) frequent: with the API worker's start-up objects (frozen in
# entrypoints/wsgi.py), about a quarter of the API's CPU on batches. Only structs that can
# never be part of a reference cycle opt out.

# --- typed identifiers -------------------------------------------------------------------
# Printable, URL- and log-safe identifiers. Lengths follow what Segment/PostHog accept for
# distinct ids while keeping DynamoDB keys small. `(?!\n)$` because Python's `$` alone
# also matches before a trailing newline (found by a property test); ECMA regexes agree.
_END = r"(?!\n)$"
_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:@+\-]*" + _END

UserId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=128, pattern=_ID, description="Who did it.")
]
SessionId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=128, pattern=_ID, description="Session id.")
]
ProductId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=128, pattern=_ID, description="Product id.")
]
EventType = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        pattern=r"^[a-z][a-z0-9_.:\-]*" + _END,
        description="Lower-case event name, e.g. page_view, click, purchase.",
    ),
]
EventId = Annotated[
    uuid.UUID,
    msgspec.Meta(
        description="Client-chosen UUID: the idempotency key. Generated if absent. Never"
        " the nil or max UUID (00000000-... and ffffffff-...: an unset UUID field)."
    ),
]
CorrelationId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._\-]{1,64}" + _END)]
Currency = Annotated[
    str, msgspec.Meta(pattern=r"^[A-Z]{3}" + _END, description="ISO 4217 code, e.g. EUR.")
]
Price = Annotated[
    Decimal,
    msgspec.Meta(description="Unit price, 0 <= price <= 1e9, at most 6 decimals; exact."),
]
Quantity = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
Timestamp = Annotated[datetime, msgspec.Meta(tz=True, description="RFC 3339 with offset.")]
Metadata = Annotated[
    dict[str, Any], msgspec.Meta(description="Free JSON object, bounded in size and depth.")
]


class EventIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """An event as a client sends it on ``POST /api/v1/analytics/events``."""

    event_type: EventType
    user_id: UserId
    session_id: SessionId
    product_id: ProductId | None = None
    metadata: Metadata = msgspec.field(default_factory=dict)
    event_id: EventId | None = None
    timestamp: Timestamp | None = None
    sent_at: Timestamp | None = None
    price: Price | None = None
    quantity: Quantity | None = None
    currency: Currency | None = None


class LegacyEventIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The seed's old API (``POST /analytics/events``): only type and user are required."""

    event_type: EventType
    user_id: UserId
    session_id: SessionId | None = None
    product_id: ProductId | None = None
    metadata: Metadata = msgspec.field(default_factory=dict)
    event_id: EventId | None = None
    timestamp: Timestamp | None = None
    price: Price | None = None
    quantity: Quantity | None = None
    currency: Currency | None = None


class BatchIn(msgspec.Struct, forbid_unknown_fields=True):
    """Many events in one body; each is validated on its own (partial acceptance)."""

    events: list[msgspec.Raw]


# Not ``kw_only``: the ingest hot path builds it positionally (8x cheaper than keywords for
# 17 fields), so the field order is part of its contract. ``gc=False`` (see the note at the
# top of this module): no cycle can pass through an Event (scalars and JSON metadata).
# (Comments, not the docstring: docstrings are the OpenAPI descriptions.)
class Event(msgspec.Struct, frozen=True, omit_defaults=False, gc=False):
    """A validated event with its computed fields: what is queued, stored and counted."""

    event_id: uuid.UUID
    event_type: str
    user_id: str
    session_id: str | None
    product_id: str | None
    metadata: dict[str, Any]
    timestamp: datetime  # UTC, clock-skew corrected
    received_at: datetime  # UTC
    event_day: str  # YYYY-MM-DD (UTC)
    event_hour: int  # 0..23 (UTC)
    price: Decimal | None
    quantity: int
    currency: str | None
    total_value: Decimal | None  # price x quantity, exact
    clock_skew_ms: int = 0  # received_at - sent_at, applied to timestamp
    correlation_id: str = ""
    legacy: bool = False


class ComputedFields(msgspec.Struct, frozen=True):
    """The derived fields echoed in the 202 receipt."""

    event_day: str
    event_hour: int
    total_value: Decimal | None
    received_at: datetime
    timestamp: datetime
    clock_skew_ms: int


class Receipt(msgspec.Struct, frozen=True):
    """The 202 body of a single-event ingest."""

    status: str
    event_id: uuid.UUID
    correlation_id: str
    background_task_id: str
    computed_fields: ComputedFields


# ``errors`` is a tuple (the same JSON array) so that an accepted item allocates no empty
# list; ``gc=False`` as for Event.
class BatchItemResult(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """One receipt per event of a batch: accepted, duplicate or rejected (with reasons)."""

    index: int
    status: str
    event_id: uuid.UUID | None = None
    errors: tuple[dict[str, str], ...] = ()


class BatchReceipt(msgspec.Struct, frozen=True):
    """The 202 (or 422 when nothing was accepted) body of a batch ingest."""

    correlation_id: str
    background_task_id: str | None
    accepted: int
    duplicates: int
    rejected: int
    results: list[BatchItemResult]
