"""Hypothesis against the decoders: arbitrary bytes and JSON only ever raise DomainError."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from analytics.adapters.memory import InMemoryTaskQueue
from analytics.application.ingest import IngestDeps, accept_batch, accept_event
from analytics.domain.errors import DomainError
from analytics.domain.events import EventIn, LegacyEventIn
from analytics.domain.validation import decode_event
from analytics.entrypoints.api.body import gunzip_capped
from analytics.entrypoints.api.problems import Problem

pytestmark = pytest.mark.unit
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Clock:
    def now(self) -> datetime:
        return datetime(2026, 11, 27, 12, tzinfo=UTC)


DEPS = IngestDeps(queue=InMemoryTaskQueue(), clock=Clock(), new_id=__import__("uuid").uuid4)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=30,
)
FIELDS = ["event_type", "user_id", "session_id", "product_id", "metadata", "event_id",
          "timestamp", "sent_at", "price", "quantity", "currency"]  # fmt: skip
plausible_values = (
    json_values
    | st.sampled_from(["purchase", "page_view", "u1", "EUR", "XXX", "2026-11-27T12:00:00Z",
                       "2026-11-27T12:00:00", "1e999", "0001-01-01T00:00:00+01:00",
                       "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "-1", "0.0000001", "12.50",
                       "00000000-0000-0000-0000-000000000000", ""])  # fmt: skip
    | st.integers(min_value=-(2**70), max_value=2**70)
)
event_like = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), plausible_values, max_size=12)


def only_domain_errors(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    try:
        return fn(*args, **kwargs)
    except DomainError:
        return None


@FAST
@given(st.binary(max_size=512))
@example(b'"\x80"')  # invalid UTF-8 in a string: msgspec raises UnicodeDecodeError
@example(b'{"events":[{"event_type":"\xff"}]}')
def test_arbitrary_bytes(raw: bytes) -> None:
    for model in (EventIn, LegacyEventIn):
        only_domain_errors(decode_event, raw, model)
    only_domain_errors(accept_batch, raw, correlation_id="c", deps=DEPS, max_events=10)
    only_domain_errors(accept_event, raw, correlation_id="c", deps=DEPS)


@FAST
@given(json_values)
def test_arbitrary_json(doc: object) -> None:
    raw = json.dumps(doc).encode()
    only_domain_errors(decode_event, raw)
    only_domain_errors(accept_batch, raw, correlation_id="c", deps=DEPS, max_events=10)
    only_domain_errors(accept_batch, json.dumps({"events": doc}).encode(), correlation_id="c",
                       deps=DEPS, max_events=10)  # fmt: skip


@FAST
@given(event_like, st.booleans())
def test_event_shaped_json(doc: dict, legacy: bool) -> None:  # type: ignore[type-arg]
    raw = json.dumps(doc).encode()
    only_domain_errors(accept_event, raw, correlation_id="c", deps=DEPS, legacy=legacy)
    only_domain_errors(accept_batch, json.dumps({"events": [doc, doc]}).encode(),
                       correlation_id="c", deps=DEPS, max_events=10)  # fmt: skip


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=5000), st.sampled_from(["[", "{\"a\":"]))
def test_deep_nesting(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    nested = opener * depth + "1" + closer * depth
    for raw in (nested, f'{{"event_type":"x","user_id":"u","session_id":"s","metadata":{{"m":{nested}}}}}'):
        only_domain_errors(decode_event, raw.encode())
        only_domain_errors(accept_batch, f'{{"events":[{raw}]}}'.encode(), correlation_id="c",
                           deps=DEPS, max_events=10)  # fmt: skip


@FAST
@given(st.binary(max_size=256))
def test_gunzip_of_arbitrary_bytes_is_a_problem_or_data(raw: bytes) -> None:
    try:
        out = gunzip_capped(raw, 1024)
    except Problem as exc:
        assert exc.status_code in (400, 413)
    else:
        assert len(out) <= 1024


rfc3339 = st.builds(
    lambda dt, minutes: dt.replace(tzinfo=__import__("datetime").timezone(
        __import__("datetime").timedelta(minutes=minutes))).isoformat(),
    st.datetimes(),
    st.integers(min_value=-23 * 60, max_value=23 * 60),
)  # fmt: skip


@FAST
@given(st.fixed_dictionaries(
    {"event_type": st.just("page_view"), "user_id": st.just("u"), "session_id": st.just("s")},
    optional={"timestamp": rfc3339, "sent_at": rfc3339},
))  # fmt: skip
def test_any_timestamps(doc: dict) -> None:  # type: ignore[type-arg]
    only_domain_errors(accept_event, json.dumps(doc).encode(), correlation_id="c", deps=DEPS)


@pytest.mark.parametrize(
    ("timestamp", "sent_at"),
    [("0001-01-01T00:00:00+01:00", None), ("9999-12-31T23:59:59-01:00", None),
     ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"), ("9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z")],
)  # fmt: skip
def test_extreme_timestamps_are_422_material(timestamp: str, sent_at: str | None) -> None:
    doc = {"event_type": "page_view", "user_id": "u", "session_id": "s", "timestamp": timestamp}
    if sent_at:
        doc["sent_at"] = sent_at
    with pytest.raises(DomainError):
        accept_event(json.dumps(doc).encode(), correlation_id="c", deps=DEPS)


@FAST
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=4), st.binary(max_size=8))
def test_gunzip_inflates_every_member_and_refuses_trailing_bytes(parts: list[bytes], tail: bytes) -> None:
    import gzip  # noqa: PLC0415

    body = b"".join(gzip.compress(p) for p in parts)
    assert gunzip_capped(body, 1200) == b"".join(parts)
    if tail and not tail.startswith(b"\x1f\x8b"):
        try:
            gunzip_capped(body + tail, 1200)
        except Problem as exc:
            assert exc.status_code == 400
        else:
            raise AssertionError("trailing bytes after the last member were accepted")
