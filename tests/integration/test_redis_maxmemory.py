"""The embedded Redis with a memory cap (``ANALYTICS_REDIS_MAXMEMORY_MB``): full, it refuses
writes and ingest answers 503; nothing queued is evicted."""

from __future__ import annotations

import json
from pathlib import Path

import falcon.testing
import pytest
import redis

from analytics.adapters.embedded_redis import RedisServerProcess
from analytics.bootstrap import bootstrap
from analytics.entrypoints.api.app import create_wsgi_app
from analytics.settings import Settings
from tests.support import free_port

pytestmark = pytest.mark.integration
EVENT = {"event_type": "page_view", "user_id": "u1", "session_id": "s1"}


def test_a_full_capped_redis_refuses_ingest_with_503_and_keeps_what_it_holds(tmp_path: Path) -> None:
    server = RedisServerProcess(tmp_path / "r", port=free_port(), maxmemory_mb=2).start()
    try:
        client = server.client()
        assert client.config_get("maxmemory") == {"maxmemory": str(2 * 1024 * 1024)}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        settings = Settings(auth="disabled", storage="memory", cache_backend="none",
                            redis_host="127.0.0.1", redis_port=server.port, namespace="cap")  # fmt: skip
        app = falcon.testing.TestClient(create_wsgi_app(bootstrap(settings)))
        first = app.simulate_post("/api/v1/analytics/events", json=EVENT)
        assert first.status_code == 202
        queued = client.hlen("cap:high_priority.msgs")
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            for i in range(10_000):  # fill it: 4 MB of ballast
                client.set(f"ballast:{i}", b"x" * 400)
        refused = app.simulate_post("/api/v1/analytics/events", json=EVENT)
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] and refused.headers["content-type"] == "application/problem+json"
        assert json.loads(refused.text)["status"] == 503
        assert client.hlen("cap:high_priority.msgs") == queued >= 1  # nothing evicted
    finally:
        server.stop()
