"""``analytics api --config config/gunicorn.conf.py`` as a real process: the file's sizing
is what runs, and an explicit setting still wins over it."""

from __future__ import annotations

import runpy
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
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def boot_log(tmp_path: Path, *, config: bool) -> str:
    """gunicorn's own log of one start (the file sets loglevel=warning; the default: info)."""
    log = tmp_path / f"gunicorn-{config}.log"
    proc, port = serve(tmp_path, config=config, log=log)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=60, proc=proc)
    finally:
        stop(proc)
    return log.read_text()


def test_the_config_file_is_what_runs(tmp_path: Path) -> None:
    assert "Booting worker" in boot_log(tmp_path, config=False)
    assert "Booting worker" not in boot_log(tmp_path, config=True)


def test_an_explicit_worker_count_wins_over_the_file(tmp_path: Path) -> None:
    expected = runpy.run_path(str(CONFIG))["workers"] + 1
    proc, port = serve(tmp_path, "--workers", str(expected))
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=60, proc=proc)
        wait_until(lambda: gunicorn_workers(proc) == expected, timeout=30,
                   message=f"expected {expected} gunicorn workers")  # fmt: skip
    finally:
        stop(proc)
