"""``analytics api --config config/gunicorn.conf.py`` as a real process: the file's sizing
is what runs, and an explicit setting still wins over it."""

from __future__ import annotations

import runpy
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.support import ROOT, analytics_cmd, child_env, free_port, wait_http, wait_until

pytestmark = pytest.mark.e2e

CONFIG = ROOT / "config" / "gunicorn.conf.py"


def serve(
    tmp_path: Path, *extra: str, config: bool = True, log: Path | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    args = ["api", "--port", str(port), *(["--config", str(CONFIG)] if config else []), *extra]
    proc = subprocess.Popen(  # noqa: S603
        analytics_cmd(*args),
        env=child_env(
            ANALYTICS_BROKER="stub",
            ANALYTICS_STORAGE="memory",
            ANALYTICS_AUTH="disabled",
            ANALYTICS_DATA_DIR=str(tmp_path / "data"),
            ANALYTICS_LOG_LEVEL="WARNING",
        ),  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb") if log else subprocess.DEVNULL,
    )
    return proc, port


def gunicorn_workers(proc: subprocess.Popen[bytes]) -> int:
    return len(psutil.Process(proc.pid).children(recursive=False))


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)  # gunicorn: quick shutdown (nothing in flight here)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def boot(tmp_path: Path, *extra: str, config: bool) -> tuple[str, int]:
    """gunicorn's own log of one start and its number of worker processes."""
    log = tmp_path / f"gunicorn-{config}.log"
    proc, port = serve(tmp_path, *extra, config=config, log=log)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=60, proc=proc)
        expected = int(extra[-1]) if extra else 2
        wait_until(lambda: gunicorn_workers(proc) == expected, timeout=30,
                   message=f"expected {expected} gunicorn workers")  # fmt: skip
        workers = gunicorn_workers(proc)
    finally:
        stop(proc)
    return log.read_text(), workers


def test_the_config_file_is_what_runs_below_explicit_settings(tmp_path: Path) -> None:
    # Without the file: the settings' defaults (2 workers, gunicorn's info log).
    log, workers = boot(tmp_path, config=False)
    assert "Booting worker" in log and workers == 2
    # With it: its loglevel (warning) applies, and an explicit --workers still wins over
    # the file's CPU-derived count.
    explicit = runpy.run_path(str(CONFIG))["workers"] + 1
    log, workers = boot(tmp_path, "--workers", str(explicit), config=True)
    assert "Booting worker" not in log
    assert workers == explicit
