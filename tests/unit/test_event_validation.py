"""Event model rules, the seed's examples, computed fields, clock skew, bounds."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from analytics.domain.errors import MalformedInput, ValidationFailed
from analytics.domain.events import EventIn, LegacyEventIn
from analytics.domain.validation import _depth, build_event, decode_event

NOW = datetime(2026, 11, 27, 12, 30, 15, tzinfo=UTC)
FIXED_ID = uuid.UUID("00000000-0000-4000-8000-000000000001")


def build(doc: dict, *, legacy: bool = False, now: datetime = NOW):  # type: ignore[no-untyped-def]
    ein = decode_event(json.dumps(doc).encode(), LegacyEventIn if legacy else EventIn)
    return build_event(ein, received_at=now, correlation_id="c1", new_id=lambda: FIXED_ID)


def rules_of(exc: pytest.ExceptionInfo[ValidationFailed]) -> set[tuple[str, str]]:
    return {(e.field, e.rule) for e in exc.value.errors}


# --- the seed's migration guide examples, exactly as written ------------------------------
SEED_NEW = {
    "event_type": "purchase",
    "user_id": "user123",
    "session_id": "sess_456",
    "product_id": "prod_789",
    "metadata": {},  # the seed writes {...}: any object
}
SEED_OLD = {"event_type": "purchase", "user_id": "user123"}


def test_seed_new_example_is_valid_on_the_new_route() -> None:
    e = build(SEED_NEW)
    assert (e.event_type, e.user_id, e.session_id, e.product_id) == (
        "purchase", "user123", "sess_456", "prod_789",
    )  # fmt: skip
    assert e.event_id == FIXED_ID and e.quantity == 1 and e.total_value is None


def test_seed_old_example_is_valid_on_the_legacy_route_only() -> None:
    assert build(SEED_OLD, legacy=True).legacy is True
    with pytest.raises(ValidationFailed) as exc:
        build(SEED_OLD)
    assert rules_of(exc) == {("session_id", "required"), ("product_id", "purchase_requires_product")}


# --- a member given twice: the last one counts (README "Errors") -------------------------
BASE = b'"event_type":"page_view","session_id":"s"'


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize(
    ("members", "field", "expected"),
    [
        (b'"user_id":"a","user_id":"b"', "user_id", "b"),
        # An earlier value that broke a rule: 422 with an empty error list (fuzz QA).
        (b'"user_id":5,"user_id":"u"', "user_id", "u"),
        (b'"user_id":"bad id","user_id":"u"', "user_id", "u"),
        (b'"user_id":"u","metadata":5,"metadata":{"x":0.1,"n":12345678901234567890}', "metadata",
         {"x": 0.1, "n": 12345678901234567890}),  # numbers kept exact on the way
        (b'"user_id":"u","timestamp":"x","timestamp":null', "timestamp", None),
    ],
)
def test_a_member_given_twice_counts_as_its_last_value(
    members: bytes, field: str, expected: object, legacy: bool
) -> None:
    raw = b"{" + BASE + b"," + members + b"}"
    ein = decode_event(raw, LegacyEventIn if legacy else EventIn, received_at=NOW)
    assert getattr(ein, field) == expected


def test_a_member_whose_last_value_breaks_a_rule_is_named() -> None:
    with pytest.raises(ValidationFailed) as once:
        decode_event(b"{" + BASE + b',"user_id":5}', EventIn, received_at=NOW)
    with pytest.raises(ValidationFailed) as exc:
        decode_event(b"{" + BASE + b',"user_id":"u","user_id":5}', EventIn, received_at=NOW)
    assert exc.value.errors == once.value.errors and rules_of(exc) == {("user_id", "invalid")}


# --- field and cross-field rules ----------------------------------------------------------
def test_every_failure_is_reported_at_once() -> None:
    doc = {"event_type": "Bad Type!", "user_id": "", "price": "abc", "extra": 1}
    with pytest.raises(ValidationFailed) as exc:
        build(doc)
    assert rules_of(exc) >= {
        ("event_type", "invalid"), ("user_id", "invalid"), ("session_id", "required"),
        ("price", "decimal"), ("extra", "unknown_field"),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"price": "10"}, ("currency", "price_requires_currency")),
        ({"price": "10", "currency": "XYZ"}, ("currency", "iso_4217")),
        ({"price": "-1", "currency": "EUR"}, ("price", "range")),
        ({"price": "1.1234567", "currency": "EUR"}, ("price", "precision")),
        ({"price": "1_0", "currency": "EUR"}, ("price", "decimal")),  # Decimal(): 10
        ({"price": "\u0661\u0662.\u0665", "currency": "EUR"}, ("price", "decimal")),  # 12.5
        ({"price": " 7.5", "currency": "EUR"}, ("price", "decimal")),
        ({"quantity": 0}, ("quantity", "invalid")),
        ({"currency": "eur", "price": "1"}, ("currency", "invalid")),
        ({"timestamp": "2026-11-27T12:00:00"}, ("timestamp", "invalid")),  # no offset
        ({"event_id": "not-a-uuid"}, ("event_id", "invalid")),
        ({"event_id": "00000000-0000-0000-0000-000000000000"}, ("event_id", "placeholder_uuid")),
        ({"event_id": "ffffffff-ffff-ffff-ffff-ffffffffffff"}, ("event_id", "placeholder_uuid")),
        ({"metadata": [1, 2]}, ("metadata", "invalid")),
    ],
)
def test_named_rules(patch: dict, expected: tuple[str, str]) -> None:
    with pytest.raises(ValidationFailed) as exc:
        build({**SEED_NEW, "event_type": "click", **patch})
    assert expected in rules_of(exc)


def test_the_nil_uuid_is_no_event_id_on_either_route() -> None:
    """A client that sends an unset UUID field with every event: without this rule each
    was answered 202, and all but the first were then dropped as its duplicates."""
    for legacy in (False, True):
        with pytest.raises(ValidationFailed) as exc:
            build({**SEED_NEW, "event_id": "00000000000000000000000000000000"}, legacy=legacy)
        assert [(e.field, e.rule) for e in exc.value.errors] == [("event_id", "placeholder_uuid")]
        assert "nil UUID" in exc.value.errors[0].message
    assert build({**SEED_NEW, "event_id": str(uuid.UUID(int=1))}).event_id == uuid.UUID(int=1)


def test_purchase_needs_a_product() -> None:
    with pytest.raises(ValidationFailed) as exc:
        build({**SEED_NEW, "product_id": None})
    assert ("product_id", "purchase_requires_product") in rules_of(exc)


def test_malformed_json_is_not_a_validation_error() -> None:
    with pytest.raises(MalformedInput):
        decode_event(b'{"event_type": ')


def test_non_object_body_names_the_root() -> None:
    with pytest.raises(ValidationFailed) as exc:
        decode_event(b"[1,2]")
    assert rules_of(exc) == {("$", "type")}


# --- computed fields, money, clock skew, bounds --------------------------------------------
def test_total_value_is_exact_decimal() -> None:
    e = build({**SEED_NEW, "price": 0.1, "quantity": 3, "currency": "EUR"})
    assert e.total_value == Decimal("0.3")
    assert msgspec.json.encode(e.total_value) == b'"0.3"'


def test_computed_day_and_hour_are_utc() -> None:
    e = build({**SEED_NEW, "timestamp": "2026-11-27T01:30:00+02:00"})
    assert e.timestamp == datetime(2026, 11, 26, 23, 30, tzinfo=UTC)
    assert (e.event_day, e.event_hour) == ("2026-11-26", 23)


def test_clock_skew_is_corrected_from_sent_at() -> None:
    # The client's clock runs 10 minutes fast: both its timestamps are 10 minutes ahead.
    client_fast = timedelta(minutes=10)
    happened = NOW - timedelta(seconds=30)
    e = build(
        {
            **SEED_NEW,
            "timestamp": (happened + client_fast).isoformat(),
            "sent_at": (NOW + client_fast).isoformat(),
        }
    )
    assert e.timestamp == happened
    assert e.clock_skew_ms == -600_000


def test_future_and_past_bounds() -> None:
    with pytest.raises(ValidationFailed) as exc:
        build({**SEED_NEW, "timestamp": (NOW + timedelta(hours=1)).isoformat()})
    assert ("timestamp", "max_future") in rules_of(exc)
    with pytest.raises(ValidationFailed) as exc:
        build({**SEED_NEW, "timestamp": (NOW - timedelta(days=31)).isoformat()})
    assert ("timestamp", "max_past") in rules_of(exc)


@pytest.mark.parametrize("late", [timedelta(seconds=1), timedelta(microseconds=1)])
def test_the_future_bound_is_exactly_five_minutes_inclusive(late: timedelta) -> None:
    """Mutation QA: README "a timestamp more than 5 minutes in the future ... is
    rejected": +5 min is accepted (the bound is inclusive), +5 min and a second (or a
    microsecond) is ``max_future``. A bound of 10 minutes let events from clocks minutes
    ahead into the counters, in minutes that had not happened yet."""
    bound = NOW + timedelta(minutes=5)
    assert build({**SEED_NEW, "timestamp": bound.isoformat()}).timestamp == bound
    with pytest.raises(ValidationFailed) as exc:
        build({**SEED_NEW, "timestamp": (bound + late).isoformat()})
    assert rules_of(exc) == {("timestamp", "max_future")}
    raw = json.dumps({**SEED_NEW, "user_id": 5, "timestamp": (bound + late).isoformat()})
    with pytest.raises(ValidationFailed) as exc:  # the slow path judges the same bound
        decode_event(raw.encode(), EventIn, received_at=NOW)
    assert ("timestamp", "max_future") in rules_of(exc)
    ok = json.dumps({**SEED_NEW, "user_id": 5, "timestamp": bound.isoformat()})
    with pytest.raises(ValidationFailed) as exc:
        decode_event(ok.encode(), EventIn, received_at=NOW)
    assert ("timestamp", "max_future") not in rules_of(exc)


def test_metadata_size_and_depth_bounds() -> None:
    deep: dict = {}
    cursor = deep
    for _ in range(10):
        cursor["a"] = {}
        cursor = cursor["a"]
    with pytest.raises(ValidationFailed) as exc:
        build({**SEED_NEW, "metadata": deep})
    assert ("metadata", "max_depth") in rules_of(exc)
    with pytest.raises(ValidationFailed) as exc:
        build({**SEED_NEW, "metadata": {"blob": "x" * 9000}})
    assert ("metadata", "max_bytes") in rules_of(exc)


class _Unwalked(list):  # type: ignore[type-arg]
    def __iter__(self) -> Any:
        raise AssertionError("the values of a list over the budget were walked")


def test_metadata_with_more_values_than_the_size_limit_has_bytes_is_not_walked() -> None:
    """Security review: 1 MiB of ``[[],[],...]`` cost 0.15 s per depth walk (four walks per
    request through the lane and Falcon) before the size was even looked at."""
    assert _depth({"a": _Unwalked([[]] * 9000)}, nodes=8192) is None
    with pytest.raises(ValidationFailed) as exc:
        build({**SEED_NEW, "metadata": {"a": [[]] * 250_000}})
    assert rules_of(exc) == {("metadata", "max_bytes")}


def test_every_metadata_check_stops_at_the_budget_and_a_too_deep_encode_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mutation QA: the budget in metadata_errors and _metadata_within (the lane's and the
    batch's fast test), the counting itself, and the RecursionError fallback were untested."""
    import analytics.domain.validation as validation

    limits = validation.Limits()
    assert _depth({"a": [[0]] * 5000}, nodes=8192) is None  # counted: 10,001 values
    unwalked = {"a": _Unwalked([[]] * 9000)}
    assert validation.metadata_errors(unwalked, limits)[0].rule == "max_bytes"
    assert validation._metadata_within(unwalked, limits) is False

    class Deep:
        @staticmethod
        def encode(value: object) -> bytes:
            raise RecursionError("too deep for the encoder")

    monkeypatch.setattr(validation, "_encoder", Deep)
    errors = validation.metadata_errors({"a": [1]}, limits)
    assert [(e.rule, e.message) for e in errors] == [("max_bytes", "more than 8192 bytes encoded, limit 8192")]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=3), inner, max_size=6),
    max_leaves=60,
)


@given(value=json_values, nodes=st.integers(min_value=1, max_value=80))
def test_the_depth_walk_with_a_budget_is_exact_or_proves_the_object_too_big(
    value: Any, nodes: int
) -> None:
    depth = _depth(value, nodes=nodes)
    if depth is None:
        assert len(msgspec.json.encode(value)) > nodes
    else:
        assert depth == _depth(value)


# --- properties ----------------------------------------------------------------------------
prices = st.decimals(min_value=0, max_value=10**6, places=6, allow_nan=False)
quantities = st.integers(min_value=1, max_value=1000)


@given(price=prices, quantity=quantities)
def test_total_value_is_price_times_quantity_exactly(price: Decimal, quantity: int) -> None:
    e = build({**SEED_NEW, "price": str(price), "quantity": quantity, "currency": "USD"})
    assert e.total_value == price * quantity
    assert isinstance(e.total_value, Decimal)


PLAIN = r"^(0|[1-9][0-9]*)(\.[0-9]{1,6})?$"


@given(price=prices, quantity=quantities, zeros=st.integers(0, 30), shift=st.integers(-3, 9),
       form=st.sampled_from(["string", "number"]))  # fmt: skip
def test_any_spelling_of_a_valid_price_is_stored_plainly(
    price: Decimal, quantity: int, zeros: int, shift: int, form: str
) -> None:
    """``1e9``, ``"1E+2"``, ``"-0.0"``, ``"1.000000000000"``: accepted (the value is
    valid) and answered without an exponent, a minus on zero or zeros past the sixth
    decimal; a plain spelling is kept as sent (``"10.00"``)."""
    import re  # noqa: PLC0415

    spelled = f"{price:f}" + ("." if "." not in f"{price:f}" and zeros else "") + "0" * zeros
    if shift:  # the same value with an exponent: 12.5 -> 0.0125E+3
        spelled = f"{price.scaleb(-shift):f}E+{shift}" if shift > 0 else f"{price.scaleb(-shift)}E{shift}"
    if price == 0 and shift == 0:
        spelled = "-" + spelled
    raw = json.dumps({**SEED_NEW, "quantity": quantity, "currency": "USD"})[:-1]
    raw += f', "price": {spelled if form == "number" else json.dumps(spelled)}}}'
    e = build_event(decode_event(raw.encode(), EventIn), received_at=NOW, correlation_id="c1",
                    new_id=lambda: FIXED_ID)  # fmt: skip
    assert e.price == price and e.total_value == price * quantity
    for value in (e.price, e.total_value):
        text = msgspec.json.decode(msgspec.json.encode(value))
        assert re.match(PLAIN, text), (spelled, text)
    if re.match(PLAIN, spelled):
        assert msgspec.json.decode(msgspec.json.encode(e.price)) == spelled


@pytest.mark.parametrize(("sent", "stored"), [
    ("1e9", "1000000000"), ('"1E+2"', "100"), ('"-0.0"', "0.0"), ('"0E+5"', "0"),
    ('"0e-999999999"', "0"), ('"1.0000000000000000000000000"', "1"),
    ("1000000000.00000000000000000000000000000000000000", "1000000000"),
    ('"19.99"', "19.99"), ("10.00", "10.00"), ("2.5E-1", "0.25"),
])  # fmt: skip
def test_prices_found_answered_with_exponents_are_plain(sent: str, stored: str) -> None:
    raw = json.dumps({**SEED_NEW, "currency": "EUR"})[:-1] + f', "price": {sent}}}'
    e = build_event(decode_event(raw.encode(), EventIn), received_at=NOW, correlation_id="c1",
                    new_id=lambda: FIXED_ID)  # fmt: skip
    assert msgspec.json.encode(e.price) == msgspec.json.encode(e.total_value) == f'"{stored}"'.encode()


@given(offset_s=st.integers(min_value=-29 * 86400, max_value=299), skew_s=st.integers(-86400, 86400))
def test_corrected_timestamp_and_computed_fields_agree(offset_s: int, skew_s: int) -> None:
    happened = NOW + timedelta(seconds=offset_s)
    skew = timedelta(seconds=skew_s)
    e = build({**SEED_NEW, "timestamp": (happened + skew).isoformat(),
               "sent_at": (NOW + skew).isoformat()})  # fmt: skip
    assert e.timestamp == happened
    assert e.event_day == happened.strftime("%Y-%m-%d") and e.event_hour == happened.hour


ident = st.text(alphabet=st.characters(codec="ascii"), min_size=0, max_size=140)


@given(user_id=ident)
def test_identifier_rule_accepts_exactly_the_documented_shape(user_id: str) -> None:
    import re

    ok = bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:@+\-]{0,127}", user_id))
    try:
        build({**SEED_NEW, "user_id": user_id})
    except ValidationFailed as exc:
        assert not ok and ("user_id", "invalid") in {(e.field, e.rule) for e in exc.errors}
    else:
        assert ok


@given(doc=st.dictionaries(st.text(max_size=12), st.none() | st.integers() | st.text(max_size=8), max_size=8))
def test_arbitrary_objects_only_ever_raise_validation_failed(doc: dict) -> None:
    try:
        build(doc)
    except ValidationFailed as exc:
        assert exc.errors


def test_a_field_that_fails_its_shape_is_not_blamed_again_by_a_rule() -> None:
    """``"currency": "eur"`` is one error (its shape), not also "a price needs a
    currency"; messages quote our patterns as written, without internal lookaheads."""
    with pytest.raises(ValidationFailed) as exc:
        build({**SEED_NEW, "price": "1", "currency": "eur", "event_type": "Purchase"})
    assert sorted(rules_of(exc)) == [("currency", "invalid"), ("event_type", "invalid")]
    messages = [e.message for e in exc.value.errors]
    assert all("(?!" not in m and "\\\\" not in m for m in messages), messages
    assert "'^[A-Z]{3}$'" in " ".join(messages)


def _deep(levels: int) -> dict:
    deep: dict = {}
    cursor = deep
    for _ in range(levels - 1):
        cursor["a"] = {}
        cursor = cursor["a"]
    cursor["a"] = 1
    return deep


@pytest.mark.parametrize("breakage", [{"user_id": ""}, {"quantity": 0}, {"zz": 1}],
                         ids=["pattern", "bound", "unknown"])  # fmt: skip
@pytest.mark.parametrize(("patch", "bound"), [
    ({"timestamp": "2099-01-01T00:00:00Z"}, ("timestamp", "max_future")),
    ({"timestamp": "2000-01-01T00:00:00Z"}, ("timestamp", "max_past")),
    ({"metadata": _deep(6)}, ("metadata", "max_depth")),
    ({"metadata": {"k": "x" * 9000}}, ("metadata", "max_bytes")),
], ids=["future", "past", "depth", "size"])  # fmt: skip
def test_a_shape_failure_does_not_hide_a_bound(patch: dict, bound: tuple, breakage: dict) -> None:
    """QA: any type, pattern or unknown-field failure used to skip the bounds, so a client
    needed a second round trip to learn its timestamp was from 2099."""
    raw = json.dumps({**SEED_NEW, **patch, **breakage}).encode()
    with pytest.raises(ValidationFailed) as exc:
        decode_event(raw, EventIn, received_at=NOW)
    broken = next(iter(breakage))
    assert bound in rules_of(exc) and broken in {f for f, _ in rules_of(exc)}
    alone = json.dumps({**SEED_NEW, **patch}).encode()
    with pytest.raises(ValidationFailed) as same:  # the same bound error as on its own
        build_event(decode_event(alone, EventIn, received_at=NOW), received_at=NOW,
                    correlation_id="c1", new_id=lambda: FIXED_ID)  # fmt: skip
    assert [e for e in exc.value.errors if e.field == bound[0]] == same.value.errors


def test_a_broken_sent_at_leaves_the_timestamp_window_unjudged() -> None:
    """Without a valid sent_at the skew cannot be corrected: a timestamp that skew would
    bring into the window is not called future."""
    doc = {**SEED_NEW, "timestamp": "2026-11-27T14:30:15Z", "sent_at": "yesterday"}
    with pytest.raises(ValidationFailed) as exc:
        decode_event(json.dumps(doc).encode(), EventIn, received_at=NOW)
    assert rules_of(exc) == {("sent_at", "invalid")}
