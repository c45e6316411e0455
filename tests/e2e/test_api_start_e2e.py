"""``analytics api`` started while its Redis does not answer: it says so, and serves."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import AnalyticsProcess, child_env, free_port, http_json

pytestmark = pytest.mark.e2e


def test_the_api_says_when_its_redis_does_not_answer_and_starts_anyway(tmp_path: Path) -> None:
    """It started silently and the first sign was a 503 (QA); the README says the
    long-running commands keep retrying, so it starts, but with one line saying why."""
    port, silent = free_port(), free_port()  # nothing listens on ``silent``
    env = child_env(REDIS_HOST="127.0.0.1", REDIS_PORT=str(silent), ANALYTICS_PORT=str(port),
                    ANALYTICS_DATA_DIR=str(tmp_path / "data"), ANALYTICS_AUTH="disabled",
                    ANALYTICS_WEB_WORKERS="1", ANALYTICS_STORAGE="memory")  # fmt: skip
    log = tmp_path / "api.log"
    with AnalyticsProcess("api", env=env, log=log) as api:
        api.wait_http(f"http://127.0.0.1:{port}/health", timeout=60)
        status, _, body = http_json("POST", f"http://127.0.0.1:{port}/api/v1/analytics/events",
                                    {"event_type": "click", "user_id": "u", "session_id": "s"})  # fmt: skip
        assert status == 503, body
    text = log.read_text()
    assert f"the Redis at 127.0.0.1:{silent} does not answer" in text
    assert "starting anyway" in text and "Traceback" not in text
