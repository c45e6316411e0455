"""Event search: query validation and the opaque, tamper-evident paging cursor.

Order and paging semantics (documented in the README, tested in the contract suite):
results are sorted ascending by ``(timestamp, event_id)`` and paged by *keyset*: a
cursor holds the key of the last event returned, and the next page returns events whose
key is strictly greater. Keys are unique and never change once stored, so a traversal
never returns an event twice and never skips an event stored before it started, however
many events arrive meanwhile (new events with later timestamps show up on later pages).

The cursor is ``base64url(version | ts_us | event_id | mac)`` where ``mac`` is an
HMAC-SHA256 (truncated to 128 bits) over the position *and* the canonical form of the
query's filters, under a server secret. An altered cursor, or one minted for other
filters, fails verification and is refused as a bad ``cursor`` parameter. Changing
``limit`` between pages is allowed: it does not change which events come next.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec

from analytics.domain.errors import BadQuery
from analytics.domain.events import Event

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
FILTERS = ("event_type", "user_id", "session_id", "product_id")
PARAMETERS = (*FILTERS, "start", "end", "limit", "cursor")

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@+\-]{0,127}$")
_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_.:\-]{0,63}$")
_PATTERNS = {
    "event_type": _EVENT_TYPE,
    "user_id": _ID,
    "session_id": _ID,
    "product_id": _ID,
}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def to_us(dt: datetime) -> int:
    """Microseconds since the epoch (exact integer, sortable)."""
    return (dt - _EPOCH) // _US


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


@dataclass(frozen=True, slots=True)
class SearchKey:
    """A position in the search order: ``(timestamp, event_id)``, both unique together."""

    timestamp: datetime
    event_id: uuid.UUID


def sort_key(timestamp: datetime, event_id: uuid.UUID) -> tuple[int, str]:
    """The order every adapter must implement: timestamp (to the microsecond), then
    event_id as its canonical lower-case string (the same order as its 16 bytes)."""
    return (to_us(timestamp), str(event_id))


@dataclass(frozen=True, slots=True)
class EventQuery:
    """What to search for: equality filters and a half-open time range ``[start, end)``."""

    event_type: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    product_id: str | None = None
    start: datetime | None = None
    end: datetime | None = None

    def canonical(self) -> bytes:
        """A stable byte form of the filters: what a cursor is bound to."""
        parts = [f"{name}={getattr(self, name) or ''}" for name in FILTERS]
        parts.append(f"start={'' if self.start is None else to_us(self.start)}")
        parts.append(f"end={'' if self.end is None else to_us(self.end)}")
        return "\x1f".join(parts).encode()


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """A validated search: the query, the page size and where to resume (if anywhere)."""

    query: EventQuery
    limit: int
    after: SearchKey | None


#: RFC 3339's date-time, seconds optional; its offset (``Z`` or ``+hh:mm``) may be missing
#: here only so that the error can say that it is. ``+hhmm`` is taken too, as an event's
#: timestamp takes it (msgspec's parser; fuzz QA: a time ingest accepted could not be
#: searched for). ``datetime.fromisoformat`` alone also takes offsets with seconds, week
#: dates and basic forms (fuzz QA).
RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:[Zz]|[+-]\d{2}:?\d{2})?"
)


def parse_time(parameter: str, value: str) -> datetime:
    """An RFC 3339 timestamp with an offset (``Z`` or ``+hh:mm``), returned in UTC."""
    text = value.strip()
    if len(text) > 16 and text[-6] == " " and text[-3] == ":":
        text = text[:-6] + "+" + text[-5:]  # an unencoded '+' in a URL arrives as ' '
    elif len(text) > 16 and text[-5] == " " and text[-4:].isdigit():
        text = text[:-5] + "+" + text[-4:]  # the same, for +hhmm
    if not RFC3339.fullmatch(text):
        raise BadQuery(parameter, f"{value!r} is not an RFC 3339 timestamp")
    if text[-1] in "zZ":
        text = text[:-1] + "+00:00"
    try:
        dt = round_to_micros(datetime.fromisoformat(text), text)
    except ValueError:
        raise BadQuery(parameter, f"{value!r} is not an RFC 3339 timestamp") from None
    except OverflowError:  # 9999-12-31T23:59:59.9999999Z rounds past the last datetime
        raise BadQuery(parameter, f"{value!r} is out of range") from None
    if dt.tzinfo is None:
        raise BadQuery(parameter, f"{value!r} has no UTC offset (add Z or +hh:mm)")
    try:
        return dt.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before datetime.min in UTC
        raise BadQuery(parameter, f"{value!r} is out of range in UTC") from None


_EXCESS_FRACTION = re.compile(r"[.,]\d{6}(\d)")


def round_to_micros(dt: datetime, text: str) -> datetime:
    """``dt`` parsed from ``text`` by ``datetime.fromisoformat``, which drops digits past
    the microsecond, rounded half up as msgspec rounds an event's timestamp at ingest: a
    bound of ``04:59:59.9999999Z`` is the same instant as an event sent with it (05:00:00),
    not a microsecond earlier."""
    excess = _EXCESS_FRACTION.search(text)
    return dt + timedelta(microseconds=1) if excess and excess.group(1) >= "5" else dt


def _single(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadQuery(name, "given more than once")
    return values[0]


def parse_search(
    params: Mapping[str, Sequence[str]], *, secret: bytes, max_limit: int = MAX_LIMIT
) -> SearchRequest:
    """Validate query-string parameters (each a list of values) into a SearchRequest.

    Raises BadQuery naming the first bad parameter: unknown names, repeated names, bad
    identifiers, bad or inverted times, a limit outside ``1..max_limit``, a bad cursor.
    """
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise BadQuery(unknown[0], f"unknown parameter; allowed: {', '.join(PARAMETERS)}")
    filters: dict[str, str | None] = {}
    for name in FILTERS:
        value = _single(params, name)
        if value is not None and not _PATTERNS[name].match(value):
            raise BadQuery(name, f"{value!r} is not a valid {name}")
        filters[name] = value
    raw_start, raw_end = _single(params, "start"), _single(params, "end")
    start = parse_time("start", raw_start) if raw_start is not None else None
    end = parse_time("end", raw_end) if raw_end is not None else None
    if start is not None and end is not None and end <= start:
        raise BadQuery("end", "must be after start (the range is [start, end))")
    raw_limit = _single(params, "limit")
    limit = min(DEFAULT_LIMIT, max_limit)
    if raw_limit is not None:
        if not re.fullmatch(r"[0-9]{1,7}", raw_limit):  # \d takes any script's digits
            raise BadQuery("limit", f"{raw_limit!r} is not a whole number")
        limit = int(raw_limit)
        if not 1 <= limit <= max_limit:
            raise BadQuery("limit", f"{limit} is out of range 1..{max_limit}")
    query = EventQuery(start=start, end=end, **filters)
    raw_cursor = _single(params, "cursor")
    after = decode_cursor(raw_cursor, query, secret) if raw_cursor is not None else None
    return SearchRequest(query=query, limit=limit, after=after)


# --- the cursor ------------------------------------------------------------------------
_VERSION = 1
_POSITION = struct.Struct(">Bq16s")  # version, ts_us, event_id bytes
_MAC_BYTES = 16
_CURSOR_BYTES = _POSITION.size + _MAC_BYTES


def _mac(secret: bytes, position: bytes, query: EventQuery) -> bytes:
    msg = b"analytics.search.v1\x00" + position + b"\x00" + query.canonical()
    return hmac.new(secret, msg, hashlib.sha256).digest()[:_MAC_BYTES]


def encode_cursor(key: SearchKey, query: EventQuery, secret: bytes) -> str:
    """An opaque cursor that resumes ``query`` after ``key``."""
    position = _POSITION.pack(_VERSION, to_us(key.timestamp), key.event_id.bytes)
    raw = position + _mac(secret, position, query)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, query: EventQuery, secret: bytes) -> SearchKey:
    """Verify and open a cursor; raise BadQuery('cursor') if altered or foreign."""
    bad = BadQuery("cursor", "invalid cursor: altered, or from a different query")
    if not cursor or len(cursor) > 128 or not re.fullmatch(r"[A-Za-z0-9_\-]+", cursor):
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise bad from None
    # Only the canonical encoding is accepted, so no two strings open the same cursor.
    if len(raw) != _CURSOR_BYTES or base64.urlsafe_b64encode(raw).decode().rstrip("=") != cursor:
        raise bad
    position, mac = raw[: _POSITION.size], raw[_POSITION.size :]
    if not hmac.compare_digest(mac, _mac(secret, position, query)):
        raise bad
    version, ts_us, id_bytes = _POSITION.unpack(position)
    if version != _VERSION:
        raise bad
    try:
        return SearchKey(from_us(ts_us), uuid.UUID(bytes=id_bytes))
    except (OverflowError, ValueError):
        raise bad from None


class SearchPage(msgspec.Struct, kw_only=True):
    """One page of results; ``next_cursor`` is None when there is nothing after it."""

    items: list[Event]
    count: int
    limit: int
    next_cursor: str | None
