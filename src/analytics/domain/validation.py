"""Validation rules and computed fields.

The hot path is one ``msgspec`` decode straight into :class:`EventIn`. Only when that fails
do we take the slow path, which decodes into plain JSON and checks field by field so the
client hears about *every* failing field at once, not just the first.
"""

from __future__ import annotations

import typing
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import msgspec

from analytics.domain.currencies import ISO_4217
from analytics.domain.errors import FieldError, MalformedInput, ValidationFailed
from analytics.domain.events import ComputedFields, Event, EventIn, LegacyEventIn

MAX_PRICE_DECIMALS = 6


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds an event must respect. Defaults are the documented ones (README, "Limits")."""

    max_future: timedelta = timedelta(minutes=5)
    max_past: timedelta = timedelta(days=30)
    metadata_max_bytes: int = 8 * 1024
    metadata_max_depth: int = 5


DEFAULT_LIMITS = Limits()

_decoders = {
    EventIn: msgspec.json.Decoder(EventIn),
    LegacyEventIn: msgspec.json.Decoder(LegacyEventIn),
}
_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()

AnyEventIn = EventIn | LegacyEventIn


def decode_event(raw: bytes, model: type[AnyEventIn] = EventIn) -> AnyEventIn:
    """Decode one event body; raise MalformedInput (not JSON) or ValidationFailed (all errors)."""
    try:
        return _decoders[model].decode(raw)
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError as exc:
        raise MalformedInput(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise MalformedInput(TOO_DEEP) from None
    try:
        doc = _any_decoder.decode(raw)
    except msgspec.DecodeError as exc:  # e.g. trailing bytes after a wrongly typed value
        raise MalformedInput(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise MalformedInput(TOO_DEEP) from None
    raise ValidationFailed(collect_field_errors(doc, model))


TOO_DEEP = "body is nested too deeply (see the README's limits table)"


def _hints(model: type) -> dict[str, Any]:
    return typing.get_type_hints(model, include_extras=True)


_HINTS = {m: _hints(m) for m in (EventIn, LegacyEventIn)}
_REQUIRED = {
    m: {f.name for f in msgspec.structs.fields(m) if f.required} for m in (EventIn, LegacyEventIn)
}


def collect_field_errors(doc: Any, model: type[AnyEventIn] = EventIn) -> list[FieldError]:
    """Check every field of ``doc`` against ``model`` and return all failures."""
    if not isinstance(doc, dict):
        return [FieldError("$", "type", f"an event must be a JSON object, not {_jtype(doc)}")]
    hints = _HINTS[model]
    errors: list[FieldError] = []
    converted: dict[str, Any] = {}
    for name in sorted(_REQUIRED[model] - doc.keys()):
        errors.append(FieldError(name, "required", "field is required"))
    for name, value in doc.items():
        if name not in hints:
            errors.append(FieldError(name, "unknown_field", "unknown field; see the API schema"))
            continue
        try:
            converted[name] = msgspec.convert(value, type=hints[name], strict=True)
        except msgspec.ValidationError as exc:
            errors.append(FieldError(name, "invalid", _clean(str(exc))))
    errors.extend(cross_field_errors(SimpleNamespace(**converted), legacy=model is LegacyEventIn))
    return errors


def _clean(msg: str) -> str:
    # msgspec says "Expected `int`, got `str`" - with a `$` path suffix we do not need.
    return msg.split(" - at `$")[0]


def _jtype(value: Any) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


# --- cross-field rules: small named checks over the decoded fields ------------------------
# A rule reads attributes, so the hot path hands it the decoded struct itself, and the slow
# path a namespace of whatever fields did convert.
Rule = Callable[[Any, bool], FieldError | None]


def purchase_requires_product(f: Any, legacy: bool) -> FieldError | None:
    if not legacy and getattr(f, "event_type", None) == "purchase" and not getattr(f, "product_id", None):
        return FieldError("product_id", "purchase_requires_product", "a purchase needs product_id")
    return None


def price_requires_currency(f: Any, legacy: bool) -> FieldError | None:
    if getattr(f, "price", None) is not None and not getattr(f, "currency", None):
        return FieldError("currency", "price_requires_currency", "a price needs an ISO 4217 currency")
    return None


def currency_is_iso4217(f: Any, legacy: bool) -> FieldError | None:
    cur = getattr(f, "currency", None)
    if cur is not None and cur not in ISO_4217:
        return FieldError("currency", "iso_4217", f"{cur!r} is not an ISO 4217 currency code")
    return None


MAX_PRICE = Decimal(1_000_000_000)


def price_range(f: Any, legacy: bool) -> FieldError | None:
    price = getattr(f, "price", None)
    if isinstance(price, Decimal) and not (0 <= price <= MAX_PRICE):  # also rejects NaN
        return FieldError("price", "range", f"must be between 0 and {MAX_PRICE}")
    return None


def price_precision(f: Any, legacy: bool) -> FieldError | None:
    price = getattr(f, "price", None)
    if (
        isinstance(price, Decimal)
        and price.is_finite()
        and 0 <= price <= MAX_PRICE  # out of range is price_range's error; round() would raise
        and price != round(price, MAX_PRICE_DECIMALS)
    ):
        return FieldError("price", "precision", f"at most {MAX_PRICE_DECIMALS} decimal places")
    return None


RULES: tuple[Rule, ...] = (
    purchase_requires_product,
    price_requires_currency,
    currency_is_iso4217,
    price_range,
    price_precision,
)


def cross_field_errors(fields: Any, legacy: bool = False) -> list[FieldError]:
    """Run every rule over an object with the event's attributes (missing ones are None)."""
    return [e for rule in RULES if (e := rule(fields, legacy)) is not None]


def metadata_errors(meta: dict[str, Any], limits: Limits) -> list[FieldError]:
    if not meta:
        return []
    errors = []
    if _depth(meta) > limits.metadata_max_depth:
        errors.append(
            FieldError("metadata", "max_depth", f"nested deeper than {limits.metadata_max_depth}")
        )
    size = len(_encoder.encode(meta))
    if size > limits.metadata_max_bytes:
        errors.append(
            FieldError(
                "metadata", "max_bytes", f"{size} bytes encoded, limit {limits.metadata_max_bytes}"
            )
        )
    return errors


def _depth(value: Any, level: int = 1, cap: int = 64) -> int:
    """Nesting depth of containers (iterative: deep input cannot exhaust the stack).

    Stops counting at ``cap``: anything that deep is over every limit anyway.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, level)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            deepest = max(deepest, depth - 1)
            continue
        deepest = max(deepest, depth)
        if depth >= cap:
            return depth
        stack.extend((c, depth + 1) for c in children)
    return deepest


# --- from input to Event ------------------------------------------------------------------
def correct_timestamp(
    timestamp: datetime | None, sent_at: datetime | None, received_at: datetime
) -> datetime:
    """Segment's clock-skew rule: shift the client's timestamp by (received_at - sent_at).

    A client whose clock is 10 minutes fast sends timestamp and sent_at 10 minutes ahead;
    the difference to our clock at receipt corrects the event time. Without a timestamp the
    event happened when we received it.
    """
    if timestamp is None:
        return received_at
    ts = timestamp.astimezone(UTC)
    if sent_at is not None:
        ts = ts + (received_at - sent_at.astimezone(UTC))
    return ts


def total_value(price: Decimal | None, quantity: int) -> Decimal | None:
    return None if price is None else price * quantity


def build_event(
    ein: AnyEventIn,
    *,
    received_at: datetime,
    correlation_id: str,
    new_id: Callable[[], uuid.UUID],
    limits: Limits = DEFAULT_LIMITS,
) -> Event:
    """Apply cross-field rules, bounds and computed fields; raise ValidationFailed with all."""
    legacy = isinstance(ein, LegacyEventIn)
    sent_at = None if legacy else ein.sent_at  # type: ignore[union-attr]
    errors = cross_field_errors(ein, legacy)
    errors.extend(metadata_errors(ein.metadata, limits))
    try:
        ts = correct_timestamp(ein.timestamp, sent_at, received_at)
    except OverflowError:  # e.g. year 9999 with a negative offset, or a huge skew
        errors.append(
            FieldError("timestamp", "out_of_range", "timestamp or sent_at is out of range")
        )
        raise ValidationFailed(errors) from None
    if ts > received_at + limits.max_future:
        errors.append(
            FieldError(
                "timestamp",
                "max_future",
                f"{ts.isoformat()} is more than {limits.max_future} in the future "
                "(after clock-skew correction)",
            )
        )
    elif ts < received_at - limits.max_past:
        errors.append(
            FieldError(
                "timestamp", "max_past", f"{ts.isoformat()} is older than {limits.max_past}"
            )
        )
    if errors:
        raise ValidationFailed(errors)
    quantity = ein.quantity or 1
    return Event(
        event_id=ein.event_id or new_id(),
        event_type=ein.event_type,
        user_id=ein.user_id,
        session_id=ein.session_id,
        product_id=ein.product_id,
        metadata=ein.metadata,
        timestamp=ts,
        received_at=received_at,
        event_day=ts.date().isoformat(),
        event_hour=ts.hour,
        price=ein.price,
        quantity=quantity,
        currency=ein.currency,
        total_value=total_value(ein.price, quantity),
        clock_skew_ms=_skew_ms(sent_at, received_at) if ein.timestamp is not None else 0,
        correlation_id=correlation_id,
        legacy=legacy,
    )


def computed_fields(event: Event) -> ComputedFields:
    return ComputedFields(
        event_day=event.event_day,
        event_hour=event.event_hour,
        total_value=event.total_value,
        received_at=event.received_at,
        timestamp=event.timestamp,
        clock_skew_ms=event.clock_skew_ms,
    )


def _skew_ms(sent_at: datetime | None, received_at: datetime) -> int:
    if sent_at is None:
        return 0
    return int((received_at - sent_at).total_seconds() * 1000)
