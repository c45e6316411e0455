"""``analytics api --config config/gunicorn.conf.py`` as a real process: the file's sizing
is what runs, and an explicit setting still wins over it."""

from __future__ import annotations

import runpy
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.support import ROOT, AnalyticsProcess, child_env, free_port, wait_until

pytestmark = pytest.mark.e2e

CONFIG = ROOT / "config" / "gunicorn.conf.py"


def gunicorn_workers(proc: subprocess.Popen[bytes]) -> int:
    return len(psutil.Process(proc.pid).children(recursive=False))


def boot(tmp_path: Path, *extra: str, config: bool) -> tuple[str, int]:
    """gunicorn's own log of one start and its number of worker processes."""
    log = tmp_path / f"gunicorn-{config}.log"
    port = free_port()
    args = ["api", "--port", str(port), *(["--config", str(CONFIG)] if config else []), *extra]
    env = child_env(
        ANALYTICS_BROKER="stub",
        ANALYTICS_STORAGE="memory",
        ANALYTICS_AUTH="disabled",
        ANALYTICS_DATA_DIR=str(tmp_path / "data"),
        ANALYTICS_LOG_LEVEL="WARNING",
    )
    # SIGINT: gunicorn's quick shutdown (nothing in flight here).
    with AnalyticsProcess(*args, env=env, log=log, log_stdout=False,
                          stop_signal=signal.SIGINT) as api:  # fmt: skip
        api.wait_http(f"http://127.0.0.1:{port}/health", timeout=60)
        expected = int(extra[-1]) if extra else 2
        wait_until(lambda: gunicorn_workers(api.proc) == expected, timeout=30,
                   message=f"expected {expected} gunicorn workers")  # fmt: skip
        workers = gunicorn_workers(api.proc)
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
