"""Validation rules and computed fields.

The hot path is one ``msgspec`` decode straight into :class:`EventIn`. Only when that fails
do we take the slow path, which decodes into plain JSON and checks field by field so the
client hears about *every* failing field at once, not just the first.
"""

from __future__ import annotations

import itertools
import operator
import re
import types
import typing
import uuid
from collections.abc import Callable, Sequence
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

#: A price sent as a JSON string is written as a JSON number would be: ASCII digits, an
#: optional minus, fraction and exponent. ``Decimal()``, which msgspec hands such strings
#: to, also reads "1_0" (10), "١٢.٥" (12.5), " 7.5\n", "+5", ".5" and "Infinity" (QA: all
#: were stored as revenue, or for the last refused only as out of range).
PRICE_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
#: A body where some member "price" (the event's, or one in its metadata) is a string
#: other than a plain number; only such a body is decoded again to look (one search in C:
#: 26 us over a 25 KB batch of 100 events, where findall-ing every price took 84).
SLOPPY_PRICE = re.compile(rb'"price"\s*:\s*"(?!' + PRICE_TEXT.pattern.encode() + rb'")')
_ESCAPE = re.compile(rb"\\u")  # a search, not ``in``: a batch's events are msgspec.Raw


def may_hide_sloppy_price(raw: bytes | msgspec.Raw) -> bool:
    """False when no price of this body (valid JSON) can be a sloppy string: no member
    "price" holds a non-plain string, and no key is written with an escape (``"pr\u0069ce"``
    is the member price too: review), the only way a key can hide from the search."""
    return SLOPPY_PRICE.search(raw) is not None or _ESCAPE.search(raw) is not None


class _PriceProbe(msgspec.Struct):
    price: object = None


_price_probe = msgspec.json.Decoder(_PriceProbe)


def price_text_error(value: object) -> FieldError | None:
    """The error of a price given as a string that is not written as a plain number."""
    if isinstance(value, str) and PRICE_TEXT.fullmatch(value) is None:
        shown = value if len(value) <= 40 else value[:40] + "..."
        return FieldError("price", "decimal", f"{shown!r} is not a decimal number in ASCII "
                          'digits (e.g. 19.99 or "19.99")')  # fmt: skip
    return None


def sloppy_price(raw: bytes | msgspec.Raw) -> bool:
    """Does this event body (valid JSON) give its price as a string Decimal() reads
    although it is not a plain number? Only a body :func:`may_hide_sloppy_price` flags is
    decoded again, for its own price (the match may be a metadata member's)."""
    if not may_hide_sloppy_price(raw):
        return False
    try:
        return price_text_error(_price_probe.decode(raw).price) is not None
    except JSON_DECODE_ERRORS:  # not an object, say: the event's own decode says so
        return False

#: What a msgspec JSON decode raises for input that is not JSON: ``DecodeError``, and
#: ``UnicodeDecodeError`` for invalid UTF-8 inside a string (msgspec does not wrap it).
JSON_DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError)


# A \uXXXX escape of a UTF-16 surrogate (an even run of backslashes before it: a real
# escape), as a valid high+low pair (group 2) or alone.
_SURROGATE_ESCAPE = re.compile(
    rb"(?<!\\)((?:\\\\)*)\\u(?:([dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|[dD][89a-fA-F][0-9a-fA-F]{2})"
)


def _keep_pairs(match: re.Match[bytes]) -> bytes:
    return match[0] if match[2] else match[1] + b"\\ufffd"


def lone_surrogates_replaced(raw: bytes | msgspec.Raw) -> bytes | None:
    """``raw`` with every lone UTF-16 surrogate escape (``"\\ud800"``, half of an emoji
    cut by a JavaScript client, or what Python's ``json.dumps`` writes for one) replaced by
    U+FFFD, as a browser's UTF-8 encoding of the same string would; None when there is
    none. msgspec refuses them ("Input data was truncated"), so one such character in one
    event's metadata made the whole batch a 400 (QA). Used only once a decode has failed."""
    raw = bytes(raw)  # a batch's events arrive as msgspec.Raw
    if b"\\u" not in raw:
        return None
    fixed = _SURROGATE_ESCAPE.sub(_keep_pairs, raw)
    return fixed if fixed != raw else None


def decode_event(
    raw: bytes,
    model: type[AnyEventIn] = EventIn,
    *,
    received_at: datetime | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> AnyEventIn:
    """Decode one event body; raise MalformedInput (not JSON) or ValidationFailed (all errors).

    With ``received_at``, a body that fails also has the bounds of the fields that did
    decode checked (metadata size and depth, the timestamp window), so its error list is
    complete: a bad ``user_id`` no longer hides a timestamp from 2099."""
    try:
        ein = _decoders[model].decode(raw)
        if ein.price is None or not sloppy_price(raw):
            return ein
    except msgspec.ValidationError:
        pass
    except JSON_DECODE_ERRORS as exc:
        fixed = lone_surrogates_replaced(raw)
        if fixed is not None:
            return decode_event(fixed, model, received_at=received_at, limits=limits)
        raise MalformedInput(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise MalformedInput(TOO_DEEP) from None
    try:
        doc = _any_decoder.decode(raw)
    except JSON_DECODE_ERRORS as exc:  # e.g. trailing bytes after a wrongly typed value
        raise MalformedInput(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise MalformedInput(TOO_DEEP) from None
    errors = collect_field_errors(doc, model, received_at=received_at, limits=limits)
    if errors:
        raise ValidationFailed(errors)
    # Every member is valid, yet the decoder refused: a member given twice whose earlier
    # value broke a rule (the decoder checks each occurrence). The last one counts (README,
    # as in JSON.parse), so the body is decoded as that: numbers kept exact on the way.
    last_wins = _exact_encoder.encode(_exact_decoder.decode(raw))
    try:
        return _decoders[model].decode(last_wins)
    except msgspec.ValidationError as exc:  # never an empty error list
        raise ValidationFailed([FieldError("$", "invalid", str(exc))]) from None


_exact_decoder = msgspec.json.Decoder(float_hook=Decimal)
_exact_encoder = msgspec.json.Encoder(decimal_format="number")
TOO_DEEP = "body is nested too deeply (see the README's limits table)"


def _hints(model: type) -> dict[str, Any]:
    return typing.get_type_hints(model, include_extras=True)


_HINTS = {m: _hints(m) for m in (EventIn, LegacyEventIn)}
_REQUIRED = {
    m: {f.name for f in msgspec.structs.fields(m) if f.required} for m in (EventIn, LegacyEventIn)
}


# --- field patterns checked after the decode (the batch hot path) -----------------------
_META_OPTIONS = (
    "gt", "ge", "lt", "le", "multiple_of", "min_length", "max_length", "tz",
    "title", "description", "examples", "extra_json_schema", "extra",
)  # fmt: skip


class PatternFree:
    """``model`` decoded without its regex patterns, the patterns then checked here.

    msgspec checks a ``pattern`` at about 0.5 us per field, five fields per event: half
    the decode of a batch. :attr:`model` is a subclass of ``model`` with the same fields,
    types, bounds and defaults minus the patterns; calling this object on a decoded value
    runs the same regexes with the same ``re.search`` semantics as msgspec, and remembers
    (up to ``memo_size`` per field) the values that passed: event types, currencies and
    a client's ids repeat. False means "decode this event with ``model`` itself", whose
    error names every failing field.
    """

    def __init__(self, model: type[msgspec.Struct], memo_size: int = 4096) -> None:
        hints = _hints(model)
        fields: list[Any] = []
        checks: list[tuple[str, Callable[[str], object], set[str]]] = []
        for f in msgspec.structs.fields(model):
            tp, patterns = _without_patterns(hints[f.name])
            if f.default is not msgspec.NODEFAULT:
                fields.append((f.name, tp, f.default))
            elif f.default_factory is not msgspec.NODEFAULT:
                fields.append((f.name, tp, msgspec.field(default_factory=f.default_factory)))
            else:
                fields.append((f.name, tp))
            checks.extend((f.name, re.compile(p).search, set()) for p in patterns)
        self.model: type[msgspec.Struct] = msgspec.defstruct(
            f"{model.__name__}PatternFree",
            fields,
            bases=(model,),
            module=__name__,
            kw_only=True,  # a decoder never calls __init__; keywords keep any field order legal
            forbid_unknown_fields=model.__struct_config__.forbid_unknown_fields,
            gc=False,  # JSON-decoded, so no cycles (see the note in domain/events.py)
        )
        self.checks = tuple(checks)
        self.memo_size = memo_size
        self._getters = tuple(
            (operator.attrgetter(name), search, passed) for name, search, passed in checks
        )

    def __call__(self, value: object) -> bool:
        for name, search, passed in self.checks:
            text = getattr(value, name)
            if text is None or text in passed:
                continue
            if type(text) is not str or search(text) is None:
                return False
            if len(passed) < self.memo_size:
                passed.add(text)  # a set is safe to share between threads (GIL)
        return True

    def failing(self, values: Sequence[object]) -> list[int]:
        """The indexes of ``values`` for which calling this object would say False.

        The same regexes and memo, by set operations over the whole batch: each field's
        distinct values, minus those already known to pass, are searched once; a field
        whose values all passed costs one pass in C over the batch, not a Python loop.
        """
        bad_fields: list[tuple[Callable[[object], object], set[object]]] = []
        memo_size = self.memo_size
        try:
            for get, search, passed in self._getters:
                fresh = set(map(get, values))
                fresh.discard(None)
                # difference(), not -=: "a -= b" walks all of b (the memo, up to memo_size
                # values), difference() walks a and looks each value up in b.
                fresh = fresh.difference(passed)
                bad = set()
                for text in fresh:
                    if type(text) is not str or search(text) is None:
                        bad.add(text)
                    elif len(passed) < memo_size:
                        passed.add(text)
                if bad:
                    bad_fields.append((get, bad))
        except TypeError:  # an unhashable value (not from a decode): one by one
            return [i for i, value in enumerate(values) if not self(value)]
        if not bad_fields:
            return []
        return [
            i for i, value in enumerate(values) if any(get(value) in bad for get, bad in bad_fields)
        ]


def _without_patterns(tp: Any) -> tuple[Any, list[str]]:
    """``tp`` with every ``Meta(pattern=...)`` removed, and the patterns removed."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        base, *metas = typing.get_args(tp)
        base, patterns = _without_patterns(base)
        kept = []
        for meta in metas:
            if isinstance(meta, msgspec.Meta) and meta.pattern is not None:
                patterns.append(meta.pattern)
                options = {k: getattr(meta, k) for k in _META_OPTIONS}
                meta = msgspec.Meta(**{k: v for k, v in options.items() if v is not None})
            kept.append(meta)
        return typing.Annotated[(base, *kept)], patterns
    if origin in (typing.Union, types.UnionType):
        parts = [_without_patterns(arg) for arg in typing.get_args(tp)]
        union = typing.Union[tuple(t for t, _ in parts)]  # noqa: UP007 - built from a tuple
        return union, [p for _, ps in parts for p in ps]
    return tp, []


def collect_field_errors(
    doc: Any,
    model: type[AnyEventIn] = EventIn,
    *,
    received_at: datetime | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> list[FieldError]:
    """Check every field of ``doc`` against ``model`` and return all failures (with
    ``received_at``, the bounds too: see :func:`decode_event`)."""
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
        if name == "price" and (error := price_text_error(value)) is not None:
            errors.append(error)
            continue
        try:
            converted[name] = msgspec.convert(value, type=hints[name], strict=True)
        except msgspec.ValidationError as exc:
            errors.append(FieldError(name, "invalid", _clean(str(exc))))
    # A rule over a field that already failed says nothing new ("eur" is not a currency;
    # "a price needs a currency" would be a second, wrong, error for the same field).
    failed = {e.field for e in errors}
    legacy = model is LegacyEventIn
    fields = SimpleNamespace(**converted)
    cross = cross_field_errors(fields, legacy=legacy)
    if received_at is not None:
        # The timestamp window needs both times as sent: a sent_at that failed would
        # leave the skew uncorrected and the window check wrong.
        timed = not {"timestamp", "sent_at"} & failed
        cross += bound_errors(fields, received_at=received_at, limits=limits, legacy=legacy,
                              timed=timed)  # fmt: skip
    errors.extend(e for e in cross if e.field not in failed)
    return errors


def _clean(msg: str) -> str:
    # msgspec says "Expected `int`, got `str`" - with a `$` path suffix we do not need, and
    # names a pattern with the lookahead that keeps `$` from matching before a final
    # newline (events._END), which is ours, not the client's.
    # msgspec quotes the pattern as a repr (backslashes doubled): shown as written.
    return msg.split(" - at `$")[0].replace("\\\\", "\\").replace("(?!\\n)", "")


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
MAX_QUANTITY = 1_000_000  # events.Quantity
#: price x quantity of one event, the same bound as the price: 10^15 revenue micros
#: (aggregation.to_micros), so a worker's round (at most 5,000 events, SharedCommit) adds
#: at most 5 * 10^18 to one counter, which binds as the signed 64-bit integer SQLite's
#: counters are. (Reads sum past 2^63 exactly: sqlite_aggregates.)
MAX_TOTAL = MAX_PRICE
#: A price at most this can never make price x quantity pass MAX_TOTAL.
_ALWAYS_WITHIN_TOTAL = MAX_TOTAL / MAX_QUANTITY


def price_range(f: Any, legacy: bool) -> FieldError | None:
    price = getattr(f, "price", None)
    # is_finite first: an ordering comparison with NaN raises InvalidOperation (was a 500)
    if isinstance(price, Decimal) and not (price.is_finite() and 0 <= price <= MAX_PRICE):
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


def total_within_bound(f: Any, legacy: bool) -> FieldError | None:
    price, quantity = getattr(f, "price", None), getattr(f, "quantity", None) or 1
    if (
        isinstance(price, Decimal)
        and price.is_finite()
        and 0 <= price <= MAX_PRICE  # out of range is price_range's error
        and isinstance(quantity, int)
        and price * quantity > MAX_TOTAL
    ):
        return FieldError(
            "total_value", "range", f"price x quantity must be at most {MAX_TOTAL}"
        )
    return None


#: RFC 9562's nil and max UUIDs (as integers): placeholders, not identifiers. A client whose
#: code sends one for every event (an unset UUID field) would have all but the first
#: stored as retries of it, each answered 202 and then dropped as a duplicate.
PLACEHOLDER_UUIDS = frozenset({0, (1 << 128) - 1})


def event_id_not_placeholder(f: Any, legacy: bool) -> FieldError | None:
    event_id = getattr(f, "event_id", None)
    if isinstance(event_id, uuid.UUID) and event_id.int in PLACEHOLDER_UUIDS:
        which = "nil" if event_id.int == 0 else "max"
        return FieldError(
            "event_id", "placeholder_uuid",
            f"{event_id} is the {which} UUID, not an id: send a unique UUID, or leave"
            " event_id out to have one generated",
        )  # fmt: skip
    return None


RULES: tuple[Rule, ...] = (
    event_id_not_placeholder,
    purchase_requires_product,
    price_requires_currency,
    currency_is_iso4217,
    price_range,
    price_precision,
    total_within_bound,
)


def cross_field_errors(fields: Any, legacy: bool = False) -> list[FieldError]:
    """Run every rule over an object with the event's attributes (missing ones are None)."""
    return [e for rule in RULES if (e := rule(fields, legacy)) is not None]


def metadata_errors(meta: dict[str, Any], limits: Limits) -> list[FieldError]:
    if not meta:
        return []
    depth = _depth(meta, nodes=limits.metadata_max_bytes)
    if depth is not None and depth > limits.metadata_max_depth:
        # Not encoded for its size: a deep enough object exhausts the stack of the
        # (recursive) encoder, which was a 500 a few levels under the decoder's own limit.
        return [
            FieldError("metadata", "max_depth", f"nested deeper than {limits.metadata_max_depth}")
        ]
    try:
        size = len(_encoder.encode(meta))
    except RecursionError:  # over the node budget, and deep below it too
        size = None
    if size is None or size > limits.metadata_max_bytes:
        encoded = f"{size} bytes" if size is not None else f"more than {limits.metadata_max_bytes} bytes"
        return [
            FieldError(
                "metadata", "max_bytes", f"{encoded} encoded, limit {limits.metadata_max_bytes}"
            )
        ]
    return []


def _depth(value: Any, level: int = 1, cap: int = 64, nodes: int | None = None) -> int | None:
    """Nesting depth of containers (iterative: deep input cannot exhaust the stack).

    Stops counting at ``cap``: anything that deep is over every limit anyway. With
    ``nodes``, None once more values than that were visited: each takes at least one byte
    encoded, so the object is over a size limit of ``nodes`` bytes whatever its depth (a
    1 MiB body of empty lists took 0.15 s of this walk, per pass; security review).
    """
    deepest = seen = 0
    stack: list[tuple[Any, int]] = [(value, level)]
    while stack:
        item, depth = stack.pop()
        seen += 1
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            deepest = max(deepest, depth - 1)
            continue
        deepest = max(deepest, depth)
        if depth >= cap:
            return depth
        if nodes is not None and seen + len(stack) + len(children) > nodes:
            return None  # every value on the stack will be visited: over budget already
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


_ONE = Decimal(1)


def canonical_price(price: Decimal) -> Decimal:
    """A valid price written plainly: as sent when it already is (``"19.99"`` stays
    ``"19.99"``, ``"10.00"`` stays ``"10.00"``), else the same value without an exponent,
    without zeros past the sixth decimal and without a minus on zero (``1e9`` ->
    ``1000000000``, ``"1.000000000000"`` -> ``1``, ``"0E-999999999"`` -> ``0``,
    ``"-0.0"`` -> ``0.0``). Stored and answered like this, and ``total_value`` with it."""
    exponent = price.as_tuple().exponent
    if -MAX_PRICE_DECIMALS <= exponent <= 0 and not price.is_signed():  # type: ignore[operator]
        return price
    if price.is_zero() and exponent <= 0:  # type: ignore[operator]
        price = price.copy_abs()
        if exponent >= -MAX_PRICE_DECIMALS:  # type: ignore[operator]
            return price
    if exponent < -MAX_PRICE_DECIMALS:  # type: ignore[operator]
        price = price.normalize()  # drops the zeros the precision rule allowed
    return price.quantize(_ONE) if price.as_tuple().exponent > 0 else price  # type: ignore[operator]


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
    return EventBuilder(
        received_at=received_at, correlation_id=correlation_id, new_id=new_id, limits=limits
    )(ein)


class EventBuilder:
    """Builds the Events of one request: one clock reading, one correlation id.

    What every event of a batch shares is computed once (time bounds, the receipt time's
    day and hour). Each event then takes the fast path: the named rules written as one
    condition that holds only when none of them can fail. An event that might break a
    rule goes through :func:`_build_checked`, which runs every rule and reports every
    failure. Both build the same Event (a property test holds them to it).
    """

    __slots__ = (
        "_day",
        "_earliest",
        "_hour",
        "_latest",
        "_now_in_bounds",
        "correlation_id",
        "limits",
        "new_id",
        "received_at",
    )

    def __init__(
        self,
        *,
        received_at: datetime,
        correlation_id: str,
        new_id: Callable[[], uuid.UUID],
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.received_at = received_at
        self.correlation_id = correlation_id
        self.new_id = new_id
        self.limits = limits
        self._latest = received_at + limits.max_future
        self._earliest = received_at - limits.max_past
        self._now_in_bounds = self._earliest <= received_at <= self._latest
        self._day = received_at.date().isoformat()
        self._hour = received_at.hour

    def __call__(self, ein: AnyEventIn) -> Event:
        legacy = isinstance(ein, LegacyEventIn)
        price, currency, meta, event_id = ein.price, ein.currency, ein.metadata, ein.event_id
        if not (
            (currency is None or currency in ISO_4217)  # currency_is_iso4217
            and (
                price is None
                or (
                    currency  # price_requires_currency
                    and price.is_finite()  # price_range
                    and 0 <= price <= MAX_PRICE
                    and price == round(price, MAX_PRICE_DECIMALS)  # price_precision
                    and (price <= _ALWAYS_WITHIN_TOTAL  # total_within_bound
                         or price * (ein.quantity or 1) <= MAX_TOTAL)  # fmt: skip
                )
            )
            and (legacy or ein.product_id or ein.event_type != "purchase")  # purchase_...
            and (not meta or _metadata_within(meta, self.limits))
            and (event_id is None or event_id.int not in PLACEHOLDER_UUIDS)  # event_id_...
        ):
            return self._checked(ein)
        received_at = self.received_at
        timestamp = ein.timestamp
        if timestamp is None:
            if not self._now_in_bounds:
                return self._checked(ein)
            ts, day, hour, skew_ms = received_at, self._day, self._hour, 0
        else:
            sent_at = None if legacy else ein.sent_at  # type: ignore[union-attr]
            try:
                ts = correct_timestamp(timestamp, sent_at, received_at)
            except OverflowError:
                return self._checked(ein)
            if not self._earliest <= ts <= self._latest:
                return self._checked(ein)
            day, hour, skew_ms = ts.date().isoformat(), ts.hour, _skew_ms(sent_at, received_at)
        quantity = ein.quantity or 1
        if price is not None:
            price = canonical_price(price)
        # Positional: a keyword call of a 17-field struct costs ~8x more (Event's field order).
        return Event(
            event_id or self.new_id(),
            ein.event_type,
            ein.user_id,
            ein.session_id,
            ein.product_id,
            meta,
            ts,
            received_at,
            day,
            hour,
            price,
            quantity,
            currency,
            None if price is None else price * quantity,
            skew_ms,
            self.correlation_id,
            legacy,
        )

    def many(self, eins: Sequence[AnyEventIn]) -> list[Event | ValidationFailed]:
        """Build every event of a batch: an Event, or the ValidationFailed it would raise.

        The same outcome as calling this object on each (a property test holds them to
        it), with the rules checked over the whole batch first: the distinct currencies
        and prices, the metadata encoded in one pass, the per-event conditions only where
        the batch says they can matter. The events no rule can fail then go through a lean
        loop (timestamps and computed fields only); the others through ``__call__``.
        """
        suspects = self._suspects(eins)
        if suspects is None:
            return [self._outcome(ein) for ein in eins]
        received_at, corr, new_id = self.received_at, self.correlation_id, self.new_id
        now_day, now_hour, now_ok = self._day, self._hour, self._now_in_bounds
        earliest, latest = self._earliest, self._latest
        out: list[Event | ValidationFailed] = []
        append = out.append
        for index, ein in enumerate(eins):
            timestamp = ein.timestamp
            if index in suspects:
                append(self._outcome(ein))
                continue
            if timestamp is None:
                if not now_ok:
                    append(self._outcome(ein))
                    continue
                ts, day, hour, skew_ms = received_at, now_day, now_hour, 0
            else:
                sent_at = ein.sent_at  # type: ignore[union-attr] - no legacy event here
                try:
                    ts = correct_timestamp(timestamp, sent_at, received_at)
                except OverflowError:
                    append(self._outcome(ein))
                    continue
                if not earliest <= ts <= latest:
                    append(self._outcome(ein))
                    continue
                day, hour = ts.date().isoformat(), ts.hour
                skew_ms = _skew_ms(sent_at, received_at)
            price, quantity = ein.price, ein.quantity or 1
            if price is not None:
                price = canonical_price(price)
            # Positional, in Event's field order (see __call__).
            append(
                Event(
                    ein.event_id or new_id(),
                    ein.event_type,
                    ein.user_id,
                    ein.session_id,
                    ein.product_id,
                    ein.metadata,
                    ts,
                    received_at,
                    day,
                    hour,
                    price,
                    quantity,
                    ein.currency,
                    None if price is None else price * quantity,
                    skew_ms,
                    corr,
                    False,
                )
            )
        return out

    def _outcome(self, ein: AnyEventIn) -> Event | ValidationFailed:
        try:
            return self(ein)
        except ValidationFailed as exc:
            return exc

    def _suspects(self, eins: Sequence[AnyEventIn]) -> set[int] | None:
        """The indexes of the events that might break a cross-field rule or a metadata
        bound (a superset: each then goes through every check); None for "all of them".

        Mostly passes in C over the batch (``map``, sets); Python loops over the events
        only when the batch holds something to look for (an unknown price or currency, a
        priced event without currency, a purchase without product, a large or nested
        metadata object).
        """
        if any(issubclass(t, LegacyEventIn) for t in set(map(type, eins))):
            return None  # the legacy rules differ (no batch route takes legacy events)
        suspects: set[int] = set()
        ids = list(map(_get_event_id, eins))
        if not _PLACEHOLDERS.isdisjoint(ids):  # event_id_not_placeholder
            suspects.update(i for i, e in enumerate(ids) if e in _PLACEHOLDERS)
        prices = list(map(_get_price, eins))
        # price_range, price_precision; total_within_bound for the large prices only
        bad_prices, large_prices = _price_verdicts(set(map(str, prices)))
        if bad_prices or large_prices:
            for i, p in enumerate(prices):
                text = str(p)
                if text in bad_prices or (
                    text in large_prices and p * (eins[i].quantity or 1) > MAX_TOTAL
                ):
                    suspects.add(i)
        currencies = list(map(_get_currency, eins))
        currency_set = set(currencies)
        bad_currencies = currency_set - _ISO_4217_OR_NONE
        if bad_currencies:  # currency_is_iso4217
            suspects.update(i for i, c in enumerate(currencies) if c in bad_currencies)
        if (None in currency_set or "" in currency_set) and prices.count(None) < len(prices):
            suspects.update(  # price_requires_currency
                i
                for i, (price, currency) in enumerate(zip(prices, currencies, strict=True))
                if price is not None and not currency
            )
        products = list(map(_get_product_id, eins))
        if None in products or "" in products:  # purchase_requires_product
            types = list(map(_get_event_type, eins))
            if "purchase" in types:
                suspects.update(
                    i
                    for i in itertools.compress(range(len(types)), map(_is_purchase, types))
                    if not products[i]
                )
        if not _metadata_all_within(list(filter(None, map(_get_metadata, eins))), self.limits):
            limits = self.limits
            suspects.update(
                i
                for i, ein in enumerate(eins)
                if ein.metadata and not _metadata_within(ein.metadata, limits)
            )
        return suspects

    def _checked(self, ein: AnyEventIn) -> Event:
        return _build_checked(
            ein,
            received_at=self.received_at,
            correlation_id=self.correlation_id,
            new_id=self.new_id,
            limits=self.limits,
        )


def _metadata_within(meta: dict[str, Any], limits: Limits) -> bool:
    """True when ``metadata_errors`` has nothing to say (a flat object skips the depth walk)."""
    for value in meta.values():
        if isinstance(value, (dict, list)):
            depth = _depth(meta, nodes=limits.metadata_max_bytes)
            if depth is None or depth > limits.metadata_max_depth:
                return False
            break
    else:
        if limits.metadata_max_depth < 1:  # a non-empty flat object is 1 deep
            return False
    return len(_encoder.encode(meta)) <= limits.metadata_max_bytes


_get_price = operator.attrgetter("price")
_get_event_id = operator.attrgetter("event_id")
_PLACEHOLDERS = frozenset(uuid.UUID(int=i) for i in PLACEHOLDER_UUIDS)
_get_product_id = operator.attrgetter("product_id")
_is_purchase = "purchase".__eq__
_get_currency = operator.attrgetter("currency")
_get_event_type = operator.attrgetter("event_type")
_get_metadata = operator.attrgetter("metadata")
_ISO_4217_OR_NONE = frozenset(ISO_4217) | {None}
#: Prices known to pass price_range and price_precision and to be at most
#: _ALWAYS_WITHIN_TOTAL (so no quantity breaks total_within_bound), by ``str(price)``: a Decimal's
#: text gives back its exact sign, digits and exponent, so equal texts get equal verdicts.
#: (Hashing a fresh Decimal costs ~750 ns, its text and a set lookup ~80 ns.)
_GOOD_PRICE_TEXTS: set[str] = set()
#: Valid prices above _ALWAYS_WITHIN_TOTAL (their quantity decides total_within_bound).
_LARGE_PRICE_TEXTS: set[str] = set()
_PRICE_MEMO_SIZE = 4096


def _price_verdicts(texts: set[str]) -> tuple[set[str], set[str]]:
    """Of the ``str()`` of a batch's prices ("None" for no price): those a price rule
    rejects, and the valid ones above ``_ALWAYS_WITHIN_TOTAL``, whose events must have
    price x quantity checked (total_within_bound). Both kinds of valid price are
    remembered (up to a bound)."""
    texts.discard("None")  # no Decimal has this text
    large = texts & _LARGE_PRICE_TEXTS
    texts = texts.difference(_GOOD_PRICE_TEXTS).difference(large)  # walks texts, not the memos
    bad = set()
    for text in texts:
        price = Decimal(text)
        if not (
            price.is_finite()  # price_range (first: NaN does not compare)
            and 0 <= price <= MAX_PRICE
            and price == round(price, MAX_PRICE_DECIMALS)  # price_precision
        ):
            bad.add(text)
            continue
        if price <= _ALWAYS_WITHIN_TOTAL:
            memo = _GOOD_PRICE_TEXTS
        else:
            memo = _LARGE_PRICE_TEXTS
            large.add(text)
        if len(memo) < _PRICE_MEMO_SIZE:
            memo.add(text)  # a set is safe to share between threads (GIL)
    return bad, large


def _metadata_all_within(metas: list[dict[str, Any]], limits: Limits) -> bool:
    """True when no metadata object of ``metas`` breaks a bound: a cheap sufficient test.

    The objects are encoded as ``metadata_errors`` does, all in one call when their array
    fits the size limit (then each does), else each on its own, in C either way. The depth
    is 1 for all of them when the encodings hold exactly one ``{`` per object and no ``[``
    (beyond the array's own): a nested object or array, or a string containing such a
    character, makes the test inconclusive (False), and the caller checks one by one.
    """
    if not metas:
        return True
    if limits.metadata_max_depth < 1:
        return False
    try:
        whole = _encoder.encode(metas)
    except RecursionError:  # far too deep: each is checked (depth first) on its own
        return False
    limit = limits.metadata_max_bytes
    if len(whole) - 2 > limit and max(map(len, map(_encoder.encode, metas))) > limit:
        return False  # the array is over the limit ("[...]"), and so is one of its objects
    return whole.count(b"{") == len(metas) and whole.count(b"[") == 1


def _build_checked(
    ein: AnyEventIn,
    *,
    received_at: datetime,
    correlation_id: str,
    new_id: Callable[[], uuid.UUID],
    limits: Limits = DEFAULT_LIMITS,
) -> Event:
    """Every rule, one by one: raise ValidationFailed with all failures, or build the Event.

    The reference for :class:`EventBuilder`'s fast path, and its fallback.
    """
    legacy = isinstance(ein, LegacyEventIn)
    sent_at = None if legacy else ein.sent_at  # type: ignore[union-attr]
    errors = cross_field_errors(ein, legacy)
    errors += bound_errors(ein, received_at=received_at, limits=limits, legacy=legacy)
    if errors:
        raise ValidationFailed(errors)
    ts = correct_timestamp(ein.timestamp, sent_at, received_at)  # in range: checked above
    quantity = ein.quantity or 1
    price = None if ein.price is None else canonical_price(ein.price)
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
        price=price,
        quantity=quantity,
        currency=ein.currency,
        total_value=total_value(price, quantity),
        clock_skew_ms=_skew_ms(sent_at, received_at) if ein.timestamp is not None else 0,
        correlation_id=correlation_id,
        legacy=legacy,
    )


def bound_errors(
    f: Any, *, received_at: datetime, limits: Limits, legacy: bool, timed: bool = True
) -> list[FieldError]:
    """The bounds of an event's fields: metadata size and depth, and (``timed``) the
    timestamp window after clock-skew correction. Reads attributes, missing ones None."""
    errors = metadata_errors(getattr(f, "metadata", None) or {}, limits)
    if not timed:
        return errors
    sent_at = None if legacy else getattr(f, "sent_at", None)
    try:
        ts = correct_timestamp(getattr(f, "timestamp", None), sent_at, received_at)
    except OverflowError:  # e.g. year 9999 with a negative offset, or a huge skew
        errors.append(
            FieldError("timestamp", "out_of_range", "timestamp or sent_at is out of range")
        )
        return errors
    if ts > received_at + limits.max_future:
        errors.append(
            FieldError(
                "timestamp",
                "max_future",
                f"{ts.isoformat()} is more than {_span(limits.max_future)} in the future "
                "(after clock-skew correction)",
            )
        )
    elif ts < received_at - limits.max_past:
        errors.append(
            FieldError(
                "timestamp", "max_past", f"{ts.isoformat()} is older than {_span(limits.max_past)}"
            )
        )
    return errors


def _span(span: timedelta) -> str:
    """``30 days``, ``5 minutes``, ``90 seconds``: a bound as a person writes it (a
    timedelta's own text is ``30 days, 0:00:00``)."""
    seconds = int(span.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds and seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


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
