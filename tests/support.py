"""Shared test helpers: free ports, a private Redis, the service as a real process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a child process that runs this checkout's code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANALYTICS_", "REDIS_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback only
                if resp.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:  # it answers: up, whatever it thinks of a bare GET
                return
            last = exc
        except Exception as exc:  # noqa: BLE001
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s: {last}")


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1, message: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(message or f"condition not met within {timeout}s")


def analytics_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "analytics", *args]


# --- API apps with keys (issue 7: every protected route needs one) ------------------------
class ApiHarness:
    """A Falcon TestClient over the real app on fakes, plus a way to mint keys.

    ``ApiHarness()`` gives an app with auth on (the default) and ``h.headers()`` an
    all-scopes key; ``ApiHarness(auth="disabled")`` an app without auth, for tests whose
    subject is not security. Extra keyword arguments go to Settings or, when they name a
    container part (task_queue, event_repo, backlog, rate_limiter...), to bootstrap.
    """

    BOOTSTRAP_PARTS = frozenset(
        {"clock", "new_id", "broker", "task_queue", "event_repo", "api_keys", "rate_limiter",
         "backlog"}
    )  # fmt: skip

    def __init__(self, **kwargs: object) -> None:
        from falcon.testing import TestClient  # noqa: PLC0415

        from analytics.adapters.memory import (  # noqa: PLC0415
            InMemoryApiKeyStore,
            InMemoryEventRepository,
            InMemoryTaskQueue,
        )
        from analytics.bootstrap import bootstrap  # noqa: PLC0415
        from analytics.entrypoints.api.app import create_app  # noqa: PLC0415
        from analytics.settings import Settings  # noqa: PLC0415

        parts = {k: v for k, v in kwargs.items() if k in self.BOOTSTRAP_PARTS}
        fields = {k: v for k, v in kwargs.items() if k not in self.BOOTSTRAP_PARTS}
        fields.setdefault("storage", "memory")
        fields.setdefault("broker", "stub")
        fields.setdefault("key_store", "memory")
        self.settings = Settings(**fields)  # type: ignore[arg-type]
        self.keys = parts.setdefault("api_keys", InMemoryApiKeyStore())
        parts.setdefault("task_queue", InMemoryTaskQueue())
        parts.setdefault("event_repo", InMemoryEventRepository())
        self.container = bootstrap(self.settings, **parts)  # type: ignore[arg-type]
        self.app = create_app(self.container)
        self.client = TestClient(self.app)
        self._admin: str | None = None

    def key(self, *scopes: str, **limits: int) -> str:
        """A new key with these scopes (default: all); returns the full secret."""
        from analytics.application.api_keys import create_key  # noqa: PLC0415
        from analytics.domain.auth import SCOPES  # noqa: PLC0415

        new = create_key(
            "test", tuple(scopes) or SCOPES, store=self.keys, clock=self.container.clock,  # type: ignore[arg-type]
            **limits,
        )  # fmt: skip
        return new.secret

    def headers(self, *scopes: str) -> dict[str, str]:
        if not scopes:
            self._admin = self._admin or self.key()
            return {"Authorization": f"Bearer {self._admin}"}
        return {"Authorization": f"Bearer {self.key(*scopes)}"}
