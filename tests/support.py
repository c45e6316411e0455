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
