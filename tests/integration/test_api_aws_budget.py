"""A hung DynamoDB holds an API read for the API's budget, not the workers'.

A silent server stands in for DynamoDB: it accepts connections and reads requests and
never answers, as a hung endpoint or a black-holed route does. The test counts the
requests botocore sends it (no wall-clock assertion): each is one read timeout a client
of the API waits through before its 503."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import falcon.testing
import pytest

from analytics.entrypoints.wsgi import build_wsgi_app
from analytics.settings import Settings
from tests.aws_support import aws_settings

pytestmark = pytest.mark.integration


class SilentServer:
    """Accepts, reads, never answers; counts the HTTP requests it was sent."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.region = "us-east-1"
        self.requests = 0
        self._lock = threading.Lock()
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def env(self) -> dict[str, str]:
        return {
            "ANALYTICS_AWS_ENDPOINT_URL": self.endpoint_url,
            "ANALYTICS_AWS_REGION": self.region,
        }

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._held.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            with self._lock:
                self.requests += chunk.count(b"POST / HTTP/1.1")

    def close(self) -> None:
        self.sock.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def silent(moto_server: Any) -> Iterator[SilentServer]:  # moto_server: fake credentials
    server = SilentServer()
    yield server
    server.close()


def settings_for(server: SilentServer, aws_names: dict[str, str], data_dir: Any) -> Settings:
    return aws_settings(
        server, aws_names,
        ANALYTICS_BROKER="stub", ANALYTICS_DATA_DIR=str(data_dir), ANALYTICS_AUTH="disabled",
        ANALYTICS_CACHE_BACKEND="memory",
        ANALYTICS_AWS_MAX_ATTEMPTS="5", ANALYTICS_AWS_READ_TIMEOUT_S="0.2",
        ANALYTICS_AWS_API_MAX_ATTEMPTS="2", ANALYTICS_AWS_API_READ_TIMEOUT_S="0.2",
        ANALYTICS_AWS_CONNECT_TIMEOUT_S="0.5", ANALYTICS_BREAKER_FAILURE_THRESHOLD="5",
    )  # fmt: skip


def test_a_read_against_a_hung_dynamodb_waits_out_the_api_budget(
    silent: SilentServer, aws_names: dict[str, str], data_dir: Any
) -> None:
    settings = settings_for(silent, aws_names, data_dir)
    client = falcon.testing.TestClient(build_wsgi_app(settings))
    before = silent.requests
    result = client.simulate_get("/api/v1/analytics/events/search", params={"user_id": "u-1"})
    assert result.status_code == 503, result.text
    assert result.headers["content-type"] == "application/problem+json"
    assert silent.requests - before == 2  # the API's two tries, not the workers' five


def test_the_workers_keep_their_own_budget(
    silent: SilentServer, aws_names: dict[str, str], data_dir: Any
) -> None:
    from analytics.bootstrap import build_event_repo  # noqa: PLC0415
    from analytics.domain.errors import StorageUnavailable  # noqa: PLC0415

    settings = settings_for(silent, aws_names, data_dir)
    repo: Any = build_event_repo(settings)  # what a worker builds
    before = silent.requests
    with pytest.raises(StorageUnavailable):
        list(repo.query_partition("by_user", "u-1", lo="0", hi="9"))
    assert silent.requests - before == 5
    assert settings.for_api().aws_max_attempts == 2 and settings.aws_max_attempts == 5
