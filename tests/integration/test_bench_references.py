"""The ingest benchmark's batch references (bench/baseline_app.py) do what their rows
claim: ``/ingest`` decodes and answers, ``/send`` queues one plain Dramatiq message per
batch holding every event of the body."""

from __future__ import annotations

import json

import msgspec
import pytest
from falcon import testing

from bench.baseline_app import create
from bench.ingest import batch_body_factory

pytestmark = pytest.mark.integration


def test_decode_only_and_one_plain_send_per_batch(redis_server, namespace):
    url = f"redis://{redis_server.host}:{redis_server.port}/{redis_server.db}"
    client = testing.TestClient(create(url, namespace))
    body = batch_body_factory(5, templates=1)(7)
    events = json.loads(body)["events"]
    headers = {"Content-Type": "application/json"}

    decoded = client.simulate_post("/ingest", body=body, headers=headers)
    assert decoded.status_code == 202 and decoded.json["n"] == 1  # one top-level key
    assert redis_server.client().hlen(f"{namespace}:high_priority.msgs") == 0

    sent = client.simulate_post("/send", body=body, headers=headers)
    assert sent.status_code == 202 and sent.json["n"] == 5
    stored = redis_server.client().hgetall(f"{namespace}:high_priority.msgs")
    assert len(stored) == 1
    message = msgspec.json.decode(next(iter(stored.values())))
    assert message["message_id"] == sent.json["message_id"]
    assert message["args"] == [events]
