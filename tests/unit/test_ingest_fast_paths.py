"""The batch hot path's shortcuts agree with the rules they stand in for.

``EventBuilder`` (one condition for every cross-field rule and bound) and
``EventBuilder.many`` (the rules checked over a whole batch) against ``_build_checked``
(the rules one by one); ``PatternFree`` (a decode without the identifier patterns, then
the same regexes in Python, per event or per batch) against msgspec's own decode; the
per-group metric increments against the per-event sums.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import dramatiq
import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from analytics.adapters import codec
from analytics.adapters.dramatiq_queue import MsgspecJSONEncoder, events_message
from analytics.adapters.memory import InMemoryTaskQueue
from analytics.application.ingest import IngestDeps, accept_batch
from analytics.domain.clock import FixedClock
from analytics.domain.errors import MalformedInput, ValidationFailed
from analytics.domain.events import Event, EventIn, LegacyEventIn
from analytics.domain.validation import (
    EventBuilder,
    Limits,
    PatternFree,
    _build_checked,
    build_event,
    decode_event,
)
from analytics.entrypoints import metrics

pytestmark = pytest.mark.unit
NOW = datetime(2026, 11, 27, 12, 30, 15, tzinfo=UTC)
FIXED_ID = uuid.UUID("00000000-0000-4000-8000-000000000001")
GOOD = {"event_type": "page_view", "user_id": "u1", "session_id": "s1"}
FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(fn: Any, ein: Any, **kw: Any) -> tuple[str, object]:
    """An Event as its exact encoding (Decimal exponents included), or the error list."""
    try:
        return "event", msgspec.json.encode(fn(ein, **kw))
    except ValidationFailed as exc:
        return "errors", [e.as_dict() for e in exc.errors]


def moments(base: datetime) -> st.SearchStrategy[str]:
    offsets = st.integers(min_value=-40 * 86400, max_value=40 * 86400).map(
        lambda s: (base + timedelta(seconds=s)).isoformat()
    )
    extremes = st.sampled_from(
        ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00Z",
         "9999-12-31T23:59:59Z", "2026-11-27T14:30:15+02:00"]
    )  # fmt: skip
    return offsets | extremes


scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=30)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)  # fmt: skip
PLACEHOLDER_IDS = ["00000000-0000-0000-0000-000000000000", "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
                   "00000000000000000000000000000000"]  # fmt: skip
ODD_PRICES = ["NaN", "sNaN", "Infinity", "-Infinity", "1E+3", "1.000000000", "0.0000001",
              "1000000000", "1000000000.000001", "-0", "19.99",
              "1_0", " 7.5", "+5", ".5", "5.", "\u0669", "19.99 "]  # Decimal() reads these  # fmt: skip
price_texts = st.decimals(min_value=-5, max_value=2 * 10**9, places=8, allow_nan=False).map(
    str
) | st.sampled_from(ODD_PRICES)
events = st.fixed_dictionaries(
    {"event_type": st.sampled_from(["purchase", "page_view", "click"]),
     "user_id": st.sampled_from(["u1", "user-42@x"]), "session_id": st.just("s1")},
    optional={
        "product_id": st.sampled_from(["p1", "sku:9"]),
        "price": price_texts,
        "currency": st.sampled_from(["EUR", "USD", "XYZ", "JPY"]),
        "quantity": st.integers(min_value=1, max_value=1_000_000),
        "timestamp": moments(NOW),
        "sent_at": moments(NOW),
        "metadata": st.dictionaries(st.text(max_size=6), json_values, max_size=4)
        | st.just({"blob": "x" * 9000}),
        "event_id": st.uuids().map(str) | st.sampled_from(PLACEHOLDER_IDS),
    },
)  # fmt: skip
limits = st.sampled_from(
    [Limits(), Limits(metadata_max_depth=1, metadata_max_bytes=40), Limits(metadata_max_depth=0),
     Limits(max_future=timedelta(0), max_past=timedelta(hours=1))]
)  # fmt: skip


@FAST
@given(
    doc=events,
    legacy=st.booleans(),
    lim=limits,
    now=st.sampled_from([NOW, NOW.replace(hour=23, minute=59)]),
)
@example(
    doc={**GOOD, "metadata": {"a": 1}}, legacy=False, lim=Limits(metadata_max_depth=0), now=NOW
)
@example(
    doc={**GOOD, "metadata": {"a": [1]}}, legacy=False, lim=Limits(metadata_max_depth=1), now=NOW
)
def test_fast_builder_builds_what_the_rules_build(
    doc: dict, legacy: bool, lim: Limits, now: datetime
) -> None:  # type: ignore[type-arg]
    if legacy:
        doc.pop("sent_at", None)
    try:
        ein = decode_event(json.dumps(doc).encode(), LegacyEventIn if legacy else EventIn)
    except (ValidationFailed, MalformedInput):
        return
    kw = {"received_at": now, "correlation_id": "c1", "new_id": lambda: FIXED_ID, "limits": lim}
    reference = outcome(_build_checked, ein, **kw)
    assert outcome(EventBuilder(**kw), ein) == reference
    assert outcome(build_event, ein, **kw) == reference


def outcome_of(value: Event | ValidationFailed) -> tuple[str, object]:
    if isinstance(value, ValidationFailed):
        return "errors", [e.as_dict() for e in value.errors]
    return "event", msgspec.json.encode(value)


@FAST
@given(
    docs=st.lists(events, min_size=1, max_size=8),
    legacy=st.lists(st.booleans(), min_size=8, max_size=8) | st.just([False] * 8),
    lim=limits,
    now=st.sampled_from([NOW, NOW.replace(hour=23, minute=59)]),
)
@example(  # one bad price among good ones: only that event is rejected
    docs=[GOOD, {**GOOD, "price": "1.0000001", "currency": "EUR"}, {**GOOD, "price": "2"}],
    legacy=[False] * 8, lim=Limits(), now=NOW,
)  # fmt: skip
@example(  # the nil and max UUIDs among ordinary ids: only those events are rejected
    docs=[{**GOOD, "event_id": str(uuid.UUID(int=5))}, {**GOOD, "event_id": PLACEHOLDER_IDS[0]},
          {**GOOD, "event_id": PLACEHOLDER_IDS[1]}, GOOD],
    legacy=[False] * 8, lim=Limits(), now=NOW,
)  # fmt: skip
@example(docs=[{**GOOD, "metadata": {"a": "{"}}, {**GOOD, "metadata": {"b": [1]}}],
         legacy=[False] * 8, lim=Limits(metadata_max_depth=1), now=NOW)  # fmt: skip
@example(  # price x quantity at, just over and far over the bound (10^9)
    docs=[{**GOOD, "price": "1000", "currency": "EUR", "quantity": 1_000_000},
          {**GOOD, "price": "1000.000001", "currency": "EUR", "quantity": 1_000_000},
          {**GOOD, "price": "5000000", "currency": "EUR", "quantity": 1_000_000},
          {**GOOD, "price": "999999999", "currency": "EUR", "quantity": 1},
          {**GOOD, "price": "500000000", "currency": "EUR", "quantity": 3}],
    legacy=[False, False, True, False] + [False] * 4, lim=Limits(), now=NOW,
)  # fmt: skip
def test_batch_builder_builds_what_the_rules_build_event_by_event(
    docs: list[dict[str, Any]], legacy: list[bool], lim: Limits, now: datetime
) -> None:
    eins = []
    for doc, old in zip(docs, legacy, strict=False):
        if old:
            doc.pop("sent_at", None)
        try:
            eins.append(decode_event(json.dumps(doc).encode(), LegacyEventIn if old else EventIn))
        except (ValidationFailed, MalformedInput):
            continue
    kw = {"received_at": now, "correlation_id": "c1", "new_id": lambda: FIXED_ID, "limits": lim}
    reference = [outcome(_build_checked, ein, **kw) for ein in eins]
    assert [outcome_of(v) for v in EventBuilder(**kw).many(eins)] == reference


def test_batch_builder_takes_its_lean_loop_for_ordinary_events() -> None:
    """The shortcut is taken (not only correct): typical events are no suspects."""
    docs = [{**GOOD, "event_type": "purchase", "product_id": "p1", "price": "19.99",
             "currency": "EUR", "quantity": 2, "metadata": {"path": "/p/1", "n": 3}},
            {**GOOD, "metadata": {}}, {**GOOD, "timestamp": NOW.isoformat()}]  # fmt: skip
    eins = [decode_event(json.dumps(d).encode()) for d in docs]
    builder = EventBuilder(received_at=NOW, correlation_id="c", new_id=uuid.uuid4)
    assert builder._suspects(eins) == set()  # noqa: SLF001
    bad = [*eins, decode_event(json.dumps({**GOOD, "metadata": {"a": {"b": 1}}}).encode())]
    assert builder._suspects(bad) == set()  # noqa: SLF001 - nested, within the depth limit
    deep = {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}
    bad.append(decode_event(json.dumps({**GOOD, "metadata": deep}).encode()))
    assert builder._suspects(bad) == {4}  # noqa: SLF001


ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:@+\-]{0,20}", fullmatch=True)
texts = st.text(max_size=12) | st.sampled_from(["", "a\n", "\na", "ok", "A", "a b", "é", "x" * 129])


@FAST
@given(
    event_type=st.from_regex(r"[a-z][a-z0-9_.:\-]{0,10}", fullmatch=True) | texts,
    user_id=ids | texts, session_id=ids | texts, product_id=st.none() | ids | texts,
    currency=st.none() | st.sampled_from(["EUR", "USD", "eur", "EURO", "EUR\n", ""]) | texts,
)  # fmt: skip
def test_pattern_free_decode_accepts_exactly_what_msgspec_accepts(
    event_type: str, user_id: str, session_id: str, product_id: str | None, currency: str | None
) -> None:
    doc = {"event_type": event_type, "user_id": user_id, "session_id": session_id,
           "product_id": product_id, "currency": currency}  # fmt: skip
    raw = json.dumps(doc).encode()
    try:
        full = msgspec.json.decode(raw, type=EventIn)
    except msgspec.ValidationError:
        full = None
    check = PatternFree(EventIn, memo_size=2)
    try:
        loose = msgspec.json.decode(raw, type=check.model)
    except msgspec.ValidationError:
        assert full is None  # fails without the patterns: fails with them too
        return
    assert isinstance(loose, EventIn)
    for _ in range(2):  # the second time from the memo
        assert check(loose) == (full is not None)
    if full is not None:
        assert msgspec.structs.asdict(loose) == msgspec.structs.asdict(full)


@FAST
@given(
    rows=st.lists(
        st.tuples(st.from_regex(r"[a-z][a-z0-9_.:\-]{0,10}", fullmatch=True) | texts,
                  ids | texts, ids | texts, st.none() | ids | texts,
                  st.none() | st.sampled_from(["EUR", "USD", "eur", "EUR\n", ""]) | texts),
        max_size=12,
    ),
    memo=st.sampled_from([0, 2, 4096]),
)  # fmt: skip
def test_pattern_free_batch_check_fails_exactly_the_events_one_by_one_fails(
    rows: list[tuple[str, str, str, str | None, str | None]], memo: int
) -> None:
    check, one_by_one = PatternFree(EventIn, memo_size=memo), PatternFree(EventIn, memo_size=0)
    values = []
    for event_type, user_id, session_id, product_id, currency in rows:
        doc = {"event_type": event_type, "user_id": user_id, "session_id": session_id,
               "product_id": product_id, "currency": currency}  # fmt: skip
        try:
            values.append(msgspec.json.decode(json.dumps(doc).encode(), type=check.model))
        except msgspec.ValidationError:
            continue
    expected = [i for i, value in enumerate(values) if not one_by_one(value)]
    for _ in range(2):  # the second time from the memo
        assert check.failing(values) == expected


def test_pattern_free_model_keeps_every_field_type_bound_and_default() -> None:
    model = PatternFree(EventIn).model
    ours, theirs = msgspec.structs.fields(model), msgspec.structs.fields(EventIn)
    assert [(f.name, f.required, f.default, f.default_factory) for f in ours] == [
        (f.name, f.required, f.default, f.default_factory) for f in theirs
    ]
    assert "pattern" not in json.dumps(msgspec.json.schema(model))
    assert json.dumps(msgspec.json.schema(model)).count("maxLength") == json.dumps(
        msgspec.json.schema(EventIn)
    ).count("maxLength")


# --- the batch path ---------------------------------------------------------------------


def batch(docs: list[Any]) -> Any:
    deps = IngestDeps(queue=InMemoryTaskQueue(), clock=FixedClock(NOW), new_id=uuid.uuid4)
    body = json.dumps({"events": docs}).encode()
    return accept_batch(body, correlation_id="c", deps=deps, max_events=50), deps.queue


def single_errors(doc: dict[str, Any]) -> list[dict[str, str]]:
    with pytest.raises(ValidationFailed) as exc:
        build_event(decode_event(json.dumps(doc).encode()), received_at=NOW,
                    correlation_id="c", new_id=uuid.uuid4)  # fmt: skip
    return [e.as_dict() for e in exc.value.errors]


@pytest.mark.parametrize(
    "bad",
    [
        {**GOOD, "event_type": "Page View"},
        {**GOOD, "user_id": "u1\n", "currency": "eur", "price": "-1"},
        {**GOOD, "session_id": "-s"},
        {**GOOD, "product_id": "p 1", "extra": 1},
        {**GOOD, "currency": "EURO"},
        {**GOOD, "price": "NaN", "currency": "EUR"},
        {**GOOD, "price": "1_0", "currency": "EUR"},  # well-typed: Decimal() reads it as 10
        {**GOOD, "price": "\u0661\u0662.\u0665", "currency": "EUR", "user_id": "u1\n"},
    ],
)
def test_a_bad_event_in_a_well_typed_batch_gets_the_single_event_errors(
    bad: dict[str, Any],
) -> None:
    receipt, queue = batch([GOOD, bad, {**GOOD, "user_id": "u2"}, bad])
    assert [r.status for r in receipt.results] == ["accepted", "rejected", "accepted", "rejected"]
    assert list(receipt.results[1].errors) == single_errors(bad) == list(receipt.results[3].errors)
    assert [e.user_id for e in queue.events] == ["u1", "u2"]


def test_nan_or_infinite_price_is_an_error_not_a_crash() -> None:
    for price in ("NaN", "sNaN", "Infinity", "-inf"):
        errors = single_errors({**GOOD, "price": price, "currency": "EUR"})
        assert {(e["field"], e["rule"]) for e in errors} == {("price", "decimal")}


def test_a_string_price_is_read_only_when_written_as_a_number_would_be() -> None:
    """QA: Decimal() read "1_0" as 10 and Arabic-Indic or full-width digits, padding and a
    plus sign too: stored and counted as revenue. A batch of numbers, plain strings and a
    metadata member named price keeps every event; each sloppy one is refused alone."""
    plain = [{**GOOD, "price": p, "currency": "EUR"} for p in ("19.99", "1E+3", "-0", "0.5e1")]
    sloppy = [{**GOOD, "price": p, "currency": "EUR"}
              for p in ("1_0", "\uff19", " 7.5\n", "+5", ".5", "5.", "1,5", "007", "19.99\n")]  # fmt: skip
    noted = {**GOOD, "price": 3, "currency": "EUR", "metadata": {"price": "1_0"}}
    receipt, queue = batch([*plain, noted, *sloppy])
    statuses = [r.status for r in receipt.results]
    assert statuses == ["accepted"] * 5 + ["rejected"] * len(sloppy)
    assert [str(e.price) for e in queue.events] == ["19.99", "1000", "0", "5", "3"]
    for result, doc in zip(receipt.results[5:], sloppy, strict=True):
        assert [(e["field"], e["rule"]) for e in result.errors] == [("price", "decimal")]
        assert list(result.errors) == single_errors(doc)


@pytest.mark.parametrize("key", [r"pr\u0069ce", r"\u0070rice", r"\u0070\u0072\u0069\u0063\u0065"])
def test_a_price_key_written_with_an_escape_gets_the_same_rule(key: str) -> None:
    """Review: the search for a sloppy price looked for the key's plain spelling only;
    ``"pr\u0069ce"`` is the member price too, and "1_0" under it was stored as 10."""
    body = json.dumps({**GOOD, "currency": "EUR"})[:-1] + f', "{key}": "1_0"}}'
    with pytest.raises(ValidationFailed) as exc:
        decode_event(body.encode())
    assert [(e.field, e.rule) for e in exc.value.errors] == [("price", "decimal")]
    deps = IngestDeps(queue=InMemoryTaskQueue(), clock=FixedClock(NOW), new_id=uuid.uuid4)
    raw = b'{"events": [' + json.dumps(GOOD).encode() + b', ' + body.encode() + b']}'
    receipt = accept_batch(raw, correlation_id="c", deps=deps, max_events=50)
    assert [r.status for r in receipt.results] == ["accepted", "rejected"]
    assert [(e["field"], e["rule"]) for e in receipt.results[1].errors] == [("price", "decimal")]
    assert decode_event(body.replace('"1_0"', '"10"').encode()).price == 10  # plain: fine


def test_accepted_events_are_counted_once_per_type_and_currency() -> None:
    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {
        "view": value("analytics_events_accepted_total", event_type="fastpath_view"),
        "buy": value("analytics_events_accepted_total", event_type="fastpath_buy"),
        "eur": value("analytics_revenue_total", currency="EUR"),
        "jpy": value("analytics_revenue_total", currency="JPY"),
    }

    def event(event_type: str, price: str | None, quantity: int, currency: str | None) -> Event:
        return Event(uuid.uuid4(), event_type, "u", "s", "p", {}, NOW, NOW, "2026-11-27", 12,
                     None if price is None else Decimal(price), quantity, currency,
                     None if price is None else Decimal(price) * quantity)  # fmt: skip

    metrics.record_accepted(
        [event("fastpath_view", None, 1, None)] * 3
        + [event("fastpath_buy", "0.1", 3, "EUR"), event("fastpath_buy", "0.2", 1, "EUR"),
           event("fastpath_buy", "5", 2, "JPY"), event("fastpath_view", "1", 1, None)],
        metrics.accepted_by_type(),
    )  # fmt: skip
    assert (
        value("analytics_events_accepted_total", event_type="fastpath_view") == before["view"] + 4
    )
    assert value("analytics_events_accepted_total", event_type="fastpath_buy") == before["buy"] + 3
    assert value("analytics_revenue_total", currency="EUR") == pytest.approx(before["eur"] + 0.5)
    assert value("analytics_revenue_total", currency="JPY") == pytest.approx(before["jpy"] + 10)


@FAST
@given(
    rows=st.lists(
        st.tuples(st.sampled_from(["prop_a", "prop_b"]),
                  st.none() | st.sampled_from(["0", "0.5", "19.99", "1000000000"]),
                  st.integers(1, 5)),
        min_size=1, max_size=12,
    ),
    currency=st.sampled_from(["KWD", "BHD", None, "mixed"]),
)  # fmt: skip
def test_accepted_counts_and_revenue_match_the_per_event_sums(
    rows: list[tuple[str, str | None, int]], currency: str | None
) -> None:
    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    events = [
        Event(uuid.uuid4(), kind, "u", "s", "p", {}, NOW, NOW, "2026-11-27", 12,
              None if price is None else Decimal(price), qty,
              ("KWD", "BHD")[i % 2] if currency == "mixed" else currency,
              None if price is None else Decimal(price) * qty)
        for i, (kind, price, qty) in enumerate(rows)
    ]  # fmt: skip
    counts = {k: sum(e.event_type == k for e in events) for k in ("prop_a", "prop_b")}
    revenue: dict[str, Decimal] = {}
    for e in events:
        if e.total_value is not None and e.currency:
            revenue[e.currency] = revenue.get(e.currency, Decimal(0)) + e.total_value
    labels = [("analytics_events_accepted_total", {"event_type": k}) for k in counts]
    labels += [("analytics_revenue_total", {"currency": c}) for c in ("KWD", "BHD")]
    before = [value(name, **lab) for name, lab in labels]
    metrics.record_accepted(events, metrics.accepted_by_type())
    after = [value(name, **lab) for name, lab in labels]
    expected = [counts["prop_a"], counts["prop_b"],
                float(revenue.get("KWD", 0)), float(revenue.get("BHD", 0))]  # fmt: skip
    assert [a - b for a, b in zip(after, before, strict=True)] == pytest.approx(expected)


# --- the message envelope ---------------------------------------------------------------
envelopes = st.fixed_dictionaries(
    {"queue_name": st.just("high_priority"), "actor_name": st.just("process_events"),
     "args": st.lists(st.text(), max_size=2), "kwargs": st.dictionaries(st.text(max_size=5), json_values),
     "options": st.dictionaries(st.text(max_size=8), json_values | st.floats(allow_nan=False, allow_infinity=False), max_size=3),
     "message_id": st.uuids().map(str), "message_timestamp": st.integers(0, 2**53)}
)  # fmt: skip


@FAST
@given(data=envelopes)
def test_msgspec_envelope_and_dramatiq_json_read_each_other(data: dict[str, Any]) -> None:
    ours, theirs = MsgspecJSONEncoder(), dramatiq.JSONEncoder()
    assert theirs.decode(ours.encode(data)) == data
    assert ours.decode(theirs.encode(data)) == data


def test_an_ingest_message_survives_the_message_encoder() -> None:
    events = [build_event(decode_event(json.dumps({**GOOD, "metadata": {"q": 'say "hi"\n', "é": 1}})
                                       .encode()), received_at=NOW, correlation_id="c",
                          new_id=uuid.uuid4) for _ in range(3)]  # fmt: skip
    message = events_message(events)
    encoded = MsgspecJSONEncoder().encode(message.asdict())
    assert codec.encode_rows(events) in encoded  # raw JSON inside the envelope, not escaped
    back = dramatiq.Message(**MsgspecJSONEncoder().decode(encoded))
    assert back == message.copy(args=(msgspec.json.decode(codec.encode_rows(events)),))
    assert codec.events_from_arg(back.args[0]) == events
    assert codec.events_from_arg(message.args[0]) == events  # before encoding, in-process
    older = codec.encode(events).decode()  # what builds before raw JSON put in the message
    assert codec.events_from_arg(older) == codec.events_from_arg(older.encode()) == events
    as_objects = msgspec.json.decode(codec.encode(events))  # event objects, decoded
    assert codec.events_from_arg(as_objects) == codec.events_from_arg([]) + events
    with pytest.raises(TypeError):
        codec.events_from_arg(42)
    with pytest.raises(msgspec.ValidationError):
        codec.events_from_arg([{"event_id": "not a uuid"}])
    with pytest.raises(dramatiq.DecodeError):
        MsgspecJSONEncoder().decode(b'{"queue_name": ')


def test_event_rows_keep_every_field_in_events_order() -> None:
    """The message rows are Event's fields by position: the two must not drift apart."""
    assert codec.EventRow.__struct_fields__ == Event.__struct_fields__
    assert [f.default for f in msgspec.structs.fields(codec.EventRow)] == [
        f.default for f in msgspec.structs.fields(Event)
    ]
    event = build_event(decode_event(json.dumps({**GOOD, "price": "2.50", "currency": "EUR",
                                                 "metadata": {"a": [1, {"b": None}]}}).encode()),
                        received_at=NOW, correlation_id="c", new_id=uuid.uuid4)  # fmt: skip
    row = msgspec.json.decode(codec.encode_rows([event]))[0]
    assert row == list(msgspec.json.decode(codec.encode(event)).values())
    assert codec.events_from_arg([row]) == [event]
    defaults = msgspec.structs.replace(event, clock_skew_ms=0, correlation_id="", legacy=False)
    assert codec.events_from_arg([row[:-3]]) == [defaults]  # trailing defaults may be left out
