"""Shared test helpers: free ports, a private Redis, the service as a real process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from email.message import Message
from pathlib import Path
from typing import Any, NamedTuple, Self

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


def json_object(line: str) -> dict[str, object] | None:
    """The JSON object a log line is, or None (text, or JSON that is not an object)."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


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


def in_forked_child(work: Callable[[], str]) -> str:
    """Fork; run ``work`` in the child and return what it returned, read in the parent
    through a pipe (the child leaves with ``os._exit``, skipping the parent's cleanups)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, work().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out


def analytics_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "analytics", *args]


# --- JSON over HTTP, as a client of the running service sees it --------------------------
class JsonResponse(NamedTuple):
    status: int
    headers: Message
    body: Any  # the decoded JSON; None for an empty body


def http_json(
    method: str, url: str, body: object | None = None, *,
    headers: dict[str, str] | None = None, timeout: float = 10.0,
) -> JsonResponse:  # fmt: skip
    """One request with a JSON body (if any); an error status is an answer, not an exception."""
    req = urllib.request.Request(  # noqa: S310 - loopback only
        url, data=json.dumps(body).encode() if body is not None else None, method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            return JsonResponse(resp.status, resp.headers, json.loads(resp.read() or b"null"))
    except urllib.error.HTTPError as err:
        return JsonResponse(err.code, err.headers, json.loads(err.read() or b"null"))


# --- the service's own processes (`python -m analytics ...`) -----------------------------
class AnalyticsProcess:
    """``python -m analytics <args>`` run as a child process of the test.

    Output is appended to ``log`` (stdout and stderr; stderr only with ``log_stdout=False``),
    or dropped without one. As a context manager it starts the process and stops it on the
    way out: ``stop_signal`` (SIGTERM, the operator's graceful stop) once, then SIGKILL if
    it outlives ``stop_timeout`` seconds. ``running(a, b)`` does the same for several.
    """

    def __init__(
        self, *args: str, env: dict[str, str], log: Path | None = None, log_stdout: bool = True,
        stop_signal: int = signal.SIGTERM, stop_timeout: float = 30.0, **popen: Any,
    ) -> None:  # fmt: skip
        self.args, self.env, self.log, self.log_stdout = args, env, log, log_stdout
        self.stop_signal, self.stop_timeout, self.popen_kwargs = stop_signal, stop_timeout, popen
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self._proc is not None, "not started"
        return self._proc

    def start(self) -> Self:
        if self.log is None:
            self._proc = self._popen(subprocess.DEVNULL, subprocess.DEVNULL)
        else:
            with self.log.open("ab") as log:  # the child has its own descriptor
                if self.log_stdout:
                    self._proc = self._popen(log, subprocess.STDOUT)
                else:
                    self._proc = self._popen(subprocess.DEVNULL, log)
        return self

    def _popen(self, stdout: Any, stderr: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(  # noqa: S603 - our own CLI
            analytics_cmd(*self.args), env=self.env, stdout=stdout, stderr=stderr,
            **self.popen_kwargs,
        )  # fmt: skip

    def wait_http(self, url: str, timeout: float = 60.0) -> None:
        """Wait until ``url`` answers; fails at once if the process exits first."""
        wait_http(url, timeout=timeout, proc=self.proc)

    def send_stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(self.stop_signal)

    def wait_stopped(self) -> int | None:
        if self._proc is None:
            return None
        try:
            self._proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)
        return self._proc.returncode

    def stop(self) -> int | None:
        """Stop it as described above; its exit status."""
        self.send_stop()
        return self.wait_stopped()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_all(procs: Iterable[AnalyticsProcess]) -> None:
    """Signal every process before waiting for any: one slow shutdown delays no other."""
    group = list(procs)
    for p in group:
        p.send_stop()
    for p in group:
        p.wait_stopped()


@contextmanager
def running(*procs: AnalyticsProcess) -> Iterator[tuple[AnalyticsProcess, ...]]:
    """Start these processes in order; on the way out stop those started (``stop_all``)."""
    started: list[AnalyticsProcess] = []
    try:
        for p in procs:
            started.append(p.start())
        yield procs
    finally:
        stop_all(started)


class ServeProcess(AnalyticsProcess):
    """``analytics serve`` (embedded Redis, workers and the API) on a free port.

    Entering it waits for ``/health``: the block sees a service that answers at ``url``.
    """

    def __init__(
        self, data_dir: Path, env: dict[str, str], log: Path | None = None,
        port: int | None = None, **popen: Any,
    ) -> None:  # fmt: skip
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__("serve", "--data-dir", str(data_dir), "--port", str(self.port),
                         env=env, log=log, stop_timeout=40, **popen)  # fmt: skip

    def __enter__(self) -> Self:
        self.start()
        try:
            self.wait_http(f"{self.url}/health", timeout=60)
        except BaseException:
            self.stop()
            raise
        return self


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
        from analytics.entrypoints.api.app import create_wsgi_app  # noqa: PLC0415
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
        wsgi = create_wsgi_app(self.container)  # what gunicorn serves: the ingest lane too
        self.app = getattr(wsgi, "app", wsgi)  # the Falcon app, for its routes
        self.client = TestClient(wsgi)
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
