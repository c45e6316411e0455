"""The ingest lane answers exactly as Falcon does, and serves only what it may.

Every case is sent twice, to two services built alike (same settings, same clocks, same
keys, their own stores and rate limiters): one is the Falcon app alone
(``create_app``), the other what gunicorn serves (``create_wsgi_app``: the lane in front).
Status, headers and body must match, apart from the ids each side makes up. The lane's
Falcon app is wrapped to record whether the lane served a request or handed it over, so a
lane that handed everything to Falcon (and so trivially matched) would fail too.
"""

from __future__ import annotations

import gzip
import itertools
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import falcon.testing
import pytest

from analytics.adapters.memory import (
    InMemoryApiKeyStore,
    InMemoryEventRepository,
    InMemoryRateLimiter,
    InMemoryTaskQueue,
)
from analytics.application.api_keys import create_key
from analytics.bootstrap import bootstrap
from analytics.domain.auth import ApiKey
from analytics.domain.clock import FixedClock
from analytics.domain.errors import QueueUnavailable
from analytics.entrypoints.api.app import create_app, create_wsgi_app
from analytics.entrypoints.api.ingest_lane import IngestLane
from analytics.settings import Settings

ROUTE = "/api/v1/analytics/events"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
EVENT = {
    "event_id": "0b8f6a9e-64a4-4b7e-9a51-3c0c7d7f6d10", "event_type": "purchase",
    "user_id": "user123", "session_id": "sess_456", "product_id": "prod_789",
    "price": "19.99", "currency": "EUR", "quantity": 2,
}  # fmt: skip


class Backlog:
    def __init__(self) -> None:
        self.waiting = 0

    def depth(self) -> int:
        return self.waiting

    def drain_rate(self) -> float | None:
        return 100.0


class Queue(InMemoryTaskQueue):
    def __init__(self) -> None:
        super().__init__()
        self.fail: BaseException | None = None

    def enqueue_events(self, events: Any) -> str:
        if self.fail is not None:
            raise self.fail
        return super().enqueue_events(events)


class Recorder:
    """The lane's Falcon app, counting what it was handed."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.calls = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.calls += 1
        return self.app(environ, start_response)


@dataclass
class Side:
    client: falcon.testing.TestClient
    queue: Queue
    backlog: Backlog
    falcon_calls: Recorder | None = None


@dataclass
class Pair:
    plain: Side
    lane: Side
    keys: dict[str, str] = field(default_factory=dict)

    def send(
        self, body: bytes | object, *, served: bool, path: str = ROUTE, **headers: str
    ) -> tuple[Any, Any]:
        """The answers of both sides; ``served``: the lane answered itself."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **headers}
        recorder = self.lane.falcon_calls
        assert recorder is not None
        before = recorder.calls
        a = self.plain.client.simulate_post(path, body=raw, headers=headers)
        b = self.lane.client.simulate_post(path, body=raw, headers=headers)
        assert (recorder.calls == before) is served, "served by the lane" if served else "by Falcon"
        assert_same(a, b)
        return a, b

    def fail_queues(self, exc: BaseException | None) -> None:
        self.plain.queue.fail = self.lane.queue.fail = exc

    def set_backlog(self, depth: int) -> None:
        self.plain.backlog.waiting = self.lane.backlog.waiting = depth


def assert_same(a: Any, b: Any) -> None:
    assert a.status == b.status
    ha, hb = dict(a.headers), dict(b.headers)
    ja, jb = json.loads(a.text), json.loads(b.text)
    for doc, hdr in ((ja, ha), (jb, hb)):
        # Made up by each side: the task id (a queue's), and a correlation id not given.
        doc.pop("background_task_id", None)
        cid = doc["correlation_id"]
        assert hdr["x-correlation-id"] == cid
        if not cid.startswith("given-"):  # made up by the side that answered
            doc["correlation_id"] = hdr["x-correlation-id"] = "<cid>"
        if hdr.get("content-length"):
            hdr["content-length"] = "<len>"  # the correlation id's length may differ
    assert ha == hb
    assert ja == jb


def make_side(settings: Settings, stored_keys: list[ApiKey], lane: bool) -> Side:
    store = InMemoryApiKeyStore()
    for key in stored_keys:
        store.add(key)
    queue, backlog = Queue(), Backlog()
    ids = (uuid.UUID(int=n) for n in itertools.count(1))  # the same server-made ids
    # The rate limiter's time stands still on both sides: on the monotonic clock a bucket
    # refilled between one side's requests and not the other's whenever they were further
    # apart than one emission interval (1 ms at 60,000 a minute), and RateLimit-Remaining
    # differed by one (seen on a fast host in CI).
    limiter = InMemoryRateLimiter(now_ms=lambda: 5_000_000.0)
    container = bootstrap(
        settings, clock=FixedClock(NOW), new_id=lambda: next(ids), task_queue=queue,
        backlog=backlog, event_repo=InMemoryEventRepository(), api_keys=store,
        rate_limiter=limiter,
    )  # fmt: skip
    if not lane:
        return Side(falcon.testing.TestClient(create_app(container)), queue, backlog)
    app = create_wsgi_app(container)
    assert isinstance(app, IngestLane)
    app.app = recorder = Recorder(app.app)
    return Side(falcon.testing.TestClient(app), queue, backlog, recorder)


def make_pair(**overrides: Any) -> Pair:
    fields: dict[str, Any] = {
        "broker": "stub", "storage": "memory", "key_store": "memory", "rate_limit": "memory",
        "max_body_bytes": 4096, "hsts_seconds": 31_536_000, "overload_queue_depth": 1000,
    }  # fmt: skip
    fields.update(overrides)
    settings = Settings(**fields)
    scratch = InMemoryApiKeyStore()
    secrets = {
        "ingest": create_key("i", ("ingest",), store=scratch, clock=FixedClock(NOW)).secret,
        "read": create_key("r", ("read",), store=scratch, clock=FixedClock(NOW)).secret,
        "tight": create_key(
            "t", ("ingest",), store=scratch, clock=FixedClock(NOW), rate_per_minute=1, burst=2
        ).secret,
    }
    stored = scratch.list()
    return Pair(make_side(settings, stored, False), make_side(settings, stored, True), secrets)


@pytest.fixture
def pair() -> Pair:
    return make_pair()


def bearer(secret: str) -> str:
    return f"Bearer {secret}"


def test_accepted_events_are_answered_alike_and_queued_once(pair: Pair) -> None:
    key = bearer(pair.keys["ingest"])
    a, b = pair.send(EVENT, served=True, Authorization=key, **{"X-Correlation-ID": "given-1"})
    assert a.status_code == 202 and b.json["event_id"] == EVENT["event_id"]
    pair.send(EVENT, served=True, **{"X-API-Key": pair.keys["ingest"]})  # the other header
    pair.send(EVENT, served=True, Authorization=key, **{"X-Correlation-ID": "not valid!"})
    pair.send(
        EVENT, served=True, Authorization=key, **{"Content-Type": "application/json; charset=utf-8"}
    )
    legacy_shape = {k: v for k, v in EVENT.items() if k != "event_id"}
    pair.send(legacy_shape, served=True, Authorization=key)  # the server makes the id
    assert len(pair.lane.queue.events) == len(pair.plain.queue.events) == 5
    assert [e.correlation_id for e in pair.lane.queue.events][:1] == ["given-1"]
    assert pair.lane.queue.events[0] == pair.plain.queue.events[0]


def test_every_failure_is_falcons_own_answer(pair: Pair) -> None:
    key = bearer(pair.keys["ingest"])
    assert pair.send(EVENT, served=False)[0].status_code == 401  # no key
    assert pair.send(EVENT, served=False, Authorization="Bearer ak_nope.x")[0].status_code == 401
    assert pair.send(EVENT, served=False, Authorization=bearer(pair.keys["read"]))[0].status_code == 403
    assert pair.send(b"{not json", served=False, Authorization=key)[0].status_code == 400
    no_product = {k: v for k, v in EVENT.items() if k != "product_id"}
    a, _ = pair.send({**no_product, "colour": "red"}, served=False, Authorization=key)
    assert a.status_code == 422 and len(a.json["errors"]) == 2
    pair.set_backlog(5000)
    a, _ = pair.send(EVENT, served=False, Authorization=key)
    assert a.status_code == 503 and a.json["type"].endswith(":overloaded")
    pair.set_backlog(0)
    assert not pair.lane.queue.events and not pair.plain.queue.events


def test_what_is_not_the_common_request_goes_to_falcon(pair: Pair) -> None:
    key = bearer(pair.keys["ingest"])
    assert pair.send(EVENT, served=False, Authorization=key, **{"Content-Type": "text/plain"})[0].status_code == 415
    assert pair.send(b"x" * 5000, served=False, Authorization=key)[0].status_code == 413
    zipped = gzip.compress(json.dumps(EVENT).encode())
    a, _ = pair.send(zipped, served=False, Authorization=key, **{"Content-Encoding": "gzip"})
    assert a.status_code == 202
    # A single event inflates to at most the body limit (4096 here), as a plain body: 8 KB
    # of gzip made 8 MB to decode (security QA).
    inflated = gzip.compress(json.dumps(EVENT).encode() + b" " * 4096)
    a, _ = pair.send(inflated, served=False, Authorization=key, **{"Content-Encoding": "gzip"})
    assert a.status_code == 413 and a.json["type"].endswith(":decompressed-too-large")
    a, _ = pair.send({"events": [EVENT]}, served=False, path=ROUTE + "/batch", Authorization=key)
    assert a.status_code == 202
    assert len(pair.lane.queue.events) == len(pair.plain.queue.events) == 2


def test_the_rate_limit_refuses_alike_and_charges_once(pair: Pair) -> None:
    key = bearer(pair.keys["tight"])  # burst 2, one more per minute
    for _ in range(2):
        a, b = pair.send(EVENT, served=True, Authorization=key)
        assert a.status_code == 202 and b.headers["RateLimit-Limit"] == "2"
    a, b = pair.send(EVENT, served=False, Authorization=key)  # refused: Falcon's 429
    assert a.status_code == 429 and b.headers["Retry-After"]
    # Had the lane's refused charge counted, the answers above would already differ
    # (RateLimit-Remaining, Retry-After); the queue holds only the two accepted.
    assert len(pair.lane.queue.events) == 2


def test_a_queue_failure_after_the_charge_is_answered_by_the_lane_alike(pair: Pair) -> None:
    key = bearer(pair.keys["ingest"])
    pair.fail_queues(QueueUnavailable("the broker did not confirm in time", retry_after=5))
    a, b = pair.send(EVENT, served=True, Authorization=key, **{"X-Correlation-ID": "given-2"})
    assert a.status_code == 503 and b.headers["Retry-After"] == "5"
    assert b.json["correlation_id"] == "given-2" and b.json["instance"] == ROUTE
    pair.fail_queues(RuntimeError("a bug"))
    a, _ = pair.send(EVENT, served=True, Authorization=key)
    assert a.status_code == 500 and a.json["type"].endswith(":internal")
    pair.fail_queues(None)
    assert pair.send(EVENT, served=True, Authorization=key)[0].status_code == 202


def test_without_keys_the_lane_charges_the_address_as_falcon_does() -> None:
    pair = make_pair(auth="disabled", rate_limit_per_minute=1, rate_limit_burst=2)
    assert pair.send(EVENT, served=True)[1].headers["RateLimit-Remaining"] == "1"
    pair.send(EVENT, served=True)
    assert pair.send(EVENT, served=False)[0].status_code == 429


def test_cors_requests_and_a_trusted_proxy_stay_with_falcon() -> None:
    pair = make_pair(auth="disabled", cors_origins="https://shop.example")
    pair.send(EVENT, served=True)
    a, _ = pair.send(EVENT, served=False, Origin="https://shop.example")
    assert a.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    pair = make_pair(auth="disabled", trust_forwarded_for=True)
    pair.send(EVENT, served=False, **{"X-Forwarded-For": "203.0.113.9"})


@pytest.mark.parametrize("setting", [{"ingest_lane": False}, {"profile_slow_ms": 100}])
def test_the_lane_is_off_when_switched_off_or_while_profiling(setting: dict[str, Any]) -> None:
    settings = Settings(broker="stub", storage="memory", auth="disabled", **setting)
    assert not isinstance(create_wsgi_app(bootstrap(settings)), IngestLane)


def test_a_caller_without_a_valid_key_costs_no_decoding(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Up to 1 MiB of JSON per request was decoded before the key was looked at (QA)."""
    import analytics.entrypoints.api.ingest_lane as lane

    decoded: list[bytes] = []

    def spy(raw: bytes, **kwargs: Any) -> Any:
        decoded.append(raw)
        return validate(raw, **kwargs)

    validate = lane.validate_event
    monkeypatch.setattr(lane, "validate_event", spy)
    a, _ = pair.send(EVENT, served=False)  # no key: Falcon's 401
    assert a.status_code == 401
    b, _ = pair.send(EVENT, served=False, Authorization="Bearer not-a-key")  # 401
    assert b.status_code == 401
    # Well-formed but unknown, or without the scope: the lane looked the key up only
    # after decoding, 0.6 s of CPU for 1 MiB of JSON per request (security review).
    unknown = "ak_" + "0" * 12 + pair.keys["ingest"][15:]
    assert pair.send(EVENT, served=False, Authorization=bearer(unknown))[0].status_code == 401
    assert pair.send(EVENT, served=False, Authorization=bearer(pair.keys["read"]))[0].status_code == 403
    tight = bearer(pair.keys["tight"])  # burst 2: out of quota, nothing more is decoded
    for _ in range(2):
        pair.send(EVENT, served=True, Authorization=tight)
    assert pair.send(EVENT, served=False, Authorization=tight)[0].status_code == 429
    assert len(decoded) == 2  # the two accepted
    decoded.clear()
    pair.send(EVENT, served=True, Authorization=bearer(pair.keys["ingest"]))
    assert len(decoded) == 1

    # A well-formed key with a bad body: the store is asked once, by Falcon's replay
    # (asking it before the decode too made two lookups of every rejected event; review).
    looked_up: list[str] = []
    real_get = InMemoryApiKeyStore.get
    monkeypatch.setattr(InMemoryApiKeyStore, "get",
                        lambda store, key_id: looked_up.append(key_id) or real_get(store, key_id))  # fmt: skip
    bad = pair.lane.client.simulate_post(ROUTE, body=b'{"event_type": 5}', headers={
        "Content-Type": "application/json", "Authorization": bearer(pair.keys["ingest"])})  # fmt: skip
    assert bad.status_code == 422 and len(looked_up) == 1, looked_up


def test_an_invalid_event_after_the_charge_is_charged_once_and_decoded_once(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lane charges before it decodes; Falcon, answering the invalid body, must not
    charge again (the plain side charges once: the RateLimit headers would differ), nor
    decode it again (security QA: 1 MiB of nested lists cost the lane 2.5x Falcon)."""
    import analytics.application.ingest as ingest

    decodes: list[bytes] = []
    decode = ingest.decode_event
    monkeypatch.setattr(ingest, "decode_event", lambda raw, *a, **k: decodes.append(raw) or decode(raw, *a, **k))
    bad = pair.lane.client.simulate_post(ROUTE, body=b'{"event_type": 5}', headers={
        "Content-Type": "application/json", "Authorization": bearer(pair.keys["ingest"])})  # fmt: skip
    assert bad.status_code == 422 and len(decodes) == 1
    key = bearer(pair.keys["tight"])  # burst 2
    a, b = pair.send(b'{"event_type": 5}', served=False, Authorization=key)
    assert a.status_code == 422 and b.headers["RateLimit-Remaining"] == "1"
    a, b = pair.send(b"{not json", served=False, Authorization=key)
    assert a.status_code == 400 and b.headers["RateLimit-Remaining"] == "0"
    assert pair.send(EVENT, served=False, Authorization=key)[0].status_code == 429
    pair2 = make_pair()  # overload after the charge: Falcon's 503, no second charge
    pair2.set_backlog(5000)
    a, b = pair2.send(EVENT, served=False, Authorization=bearer(pair2.keys["tight"]))
    assert a.status_code == 503 and b.headers["RateLimit-Remaining"] == "1"


def test_the_lane_takes_a_body_up_to_the_limit_and_falcon_refuses_one_byte_more(
    pair: Pair,
) -> None:
    """Mutation QA: a body one byte over ``max_body_bytes`` (4096 here) must reach Falcon,
    which refuses it (413); a lane bound off by one read and accepted it, so the same
    request was queued through gunicorn and refused without the lane."""
    key = bearer(pair.keys["ingest"])
    raw = json.dumps(EVENT).encode()
    at_limit = raw + b" " * (4096 - len(raw))
    a, _ = pair.send(at_limit, served=True, Authorization=key)
    assert a.status_code == 202
    a, _ = pair.send(at_limit + b" ", served=False, Authorization=key)
    assert a.status_code == 413
    assert len(pair.lane.queue.events) == len(pair.plain.queue.events) == 1


def test_a_request_handed_to_falcon_after_the_charge_is_logged_with_its_key(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutation QA: Falcon answers the lane's invalid body with the key the lane found;
    without it the access line lost ``api_key_id`` (the plain side's has it)."""
    import io
    import sys

    from analytics.domain.auth import parse_key
    from analytics.entrypoints.logs import configure_logging

    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    configure_logging("INFO", "json")
    pair.send(b'{"event_type": 5}', served=False, Authorization=bearer(pair.keys["ingest"]))
    lines = [json.loads(x) for x in buf.getvalue().splitlines() if x.startswith("{")]
    access = [x for x in lines if x.get("event") == "request"]
    key_id = parse_key(pair.keys["ingest"])[0]  # type: ignore[index]
    assert [(x["status"], x.get("api_key_id")) for x in access] == [(422, key_id)] * 2
