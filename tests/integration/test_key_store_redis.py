"""The key-store contract (tests/unit/test_api_keys.py) against the Redis store."""

from __future__ import annotations

from typing import Any

import pytest

from analytics.adapters.redis_keys import RedisApiKeyStore
from tests.conftest import RedisInfo
from tests.unit.test_api_keys import (  # noqa: F401 - the shared contract runs here too
    test_authenticate_and_authorize,
    test_dev_key_only_on_first_start,
    test_store_contract,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_server: RedisInfo, namespace: str) -> RedisApiKeyStore:
    return RedisApiKeyStore(redis_server.client(), namespace)


def test_keys_are_shared_between_instances(redis_server: RedisInfo, namespace: str) -> None:
    from analytics.application.api_keys import authenticate, create_key
    from tests.unit.test_api_keys import FixedClock

    a = RedisApiKeyStore(redis_server.client(), namespace)
    b = RedisApiKeyStore(redis_server.client(), namespace)
    new = create_key("shared", ("read",), store=a, clock=FixedClock())
    assert authenticate(new.secret, store=b).key_id == new.key.key_id
    assert b.revoke(new.key.key_id, FixedClock().now())
    assert not a.get(new.key.key_id).active  # type: ignore[union-attr]
    raw = b"".join(redis_server.client().hvals(f"{namespace}:api_keys"))
    assert new.secret.split("_", 2)[2].encode() not in raw


def test_key_store_down_is_503_not_500() -> None:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from analytics.domain.auth import SCOPES, generate_key
    from tests.support import ApiHarness, free_port
    from tests.unit.test_api_keys import FixedClock

    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    h = ApiHarness(api_keys=RedisApiKeyStore(dead, "x"), rate_limit="disabled")
    key = generate_key("k", SCOPES, now=FixedClock().now()).secret
    r = h.client.simulate_post("/api/v1/analytics/events", headers={"X-API-Key": key},
                               json={"event_type": "a", "user_id": "u", "session_id": "s"})  # fmt: skip
    assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
    assert r.headers["retry-after"]


def test_a_503_tells_the_client_what_is_down_not_where(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The key store is asked before the caller's key is known: its error (a socket path,
    a host and port) must not reach an anonymous client; it goes to the log, once per
    10 s per kind of error (an outage makes every request a 503)."""
    import redis
    import structlog.testing
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from analytics.entrypoints.api import problems
    from tests.support import ApiHarness

    monkeypatch.setattr(problems, "_OUTAGE_LOGGED", {})  # other tests' outages are not ours

    secret_path = str(tmp_path / "secret-data" / "redis.sock")
    dead = redis.Redis(unix_socket_path=secret_path, retry=Retry(NoBackoff(), 0))
    h = ApiHarness(api_keys=RedisApiKeyStore(dead, "x"), rate_limit="disabled")
    made_up = "ak_000000000000_" + "A" * 43

    def search() -> Any:
        return h.client.simulate_get("/api/v1/analytics/events/search",
                                     headers={"Authorization": f"Bearer {made_up}"})  # fmt: skip

    # structlog's own capture: the configured stream may be another test's (review).
    with structlog.testing.capture_logs() as logged:
        r = search()
    assert r.status_code == 503, r.text
    # the key store by name: "storage" sent operators to SQLite, which was fine (ops QA)
    assert r.json["detail"] == "the API key store is unavailable; retry later", r.json
    assert "secret-data" not in r.text
    (line,) = [e for e in logged if e["event"] == "dependency unavailable"]
    assert "secret-data" in line["error"]  # the operator still sees why
    with structlog.testing.capture_logs() as logged:
        assert [search().status_code for _ in range(3)] == [503] * 3
    assert [e for e in logged if e["event"] == "dependency unavailable"] == []  # not 3 more
    assert problems._OUTAGE_LOGGED["KeyStoreUnavailable"][1] == 3  # counted for the next one
