"""The data directory's disk full, under ``analytics serve``, from the outside.

With prometheus-client's memory-mapped files under the data directory, a full disk killed
every new gunicorn worker at its first metric (SIGBUS): gunicorn replaced them in a loop
and clients met reset connections (QA: 145 of 980 requests). Now a full disk is what the
README says: the embedded Redis cannot append, ingest answers 503 with ``Retry-After``,
nothing that got 202 is lost, and once space is freed ingest works again.

Needs a small filesystem of its own: a tmpfs, which only root may mount (skipped else).
"""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from analytics.adapters.sqlite_store import SQLiteDatabase, SQLiteEventRepository
from tests.support import ServeProcess, child_env, http_json, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(  # noqa: S603, S607
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)  # noqa: S603, S607


def _fill(path: Path) -> None:
    with path.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * (256 * 1024))
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


def _send(url: str, event_id: str) -> int | str:
    try:
        r = http_json("POST", f"{url}/api/v1/analytics/events", {
            "event_type": "click", "user_id": "disk-full", "session_id": "s",
            "event_id": event_id}, timeout=20)  # fmt: skip
    except OSError as exc:  # a reset or refused connection: what this test is about
        return f"{type(exc).__name__}: {exc}"
    assert r.status in (202, 503), (r.status, r.body)
    if r.status == 503:
        assert int(r.headers["Retry-After"]) > 0
    return r.status


def test_a_full_data_disk_is_503_then_recovers_without_losing_an_accepted_event(
    small_disk: Path,
) -> None:
    data_dir = small_disk / "data"
    log = small_disk.parent / "serve.log"  # not on the full disk: the test reads it
    env = child_env(ANALYTICS_WEB_WORKERS="2", ANALYTICS_WORKER_PROCESSES="1",
                    ANALYTICS_AUTH="disabled", ANALYTICS_WORKER_METRICS_PORT="0")  # fmt: skip
    accepted: list[str] = []
    with ServeProcess(data_dir, env, log=log) as serve:
        for _ in range(10):
            event_id = str(uuid.uuid4())
            assert _send(serve.url, event_id) == 202
            accepted.append(event_id)
        filler = small_disk / "filler"
        _fill(filler)
        answers: list[int | str] = []
        for _ in range(40):
            event_id = str(uuid.uuid4())
            answers.append(_send(serve.url, event_id))
            if answers[-1] == 202:  # Redis took it before it met the full disk
                accepted.append(event_id)
        errors = [a for a in answers if isinstance(a, str)]
        assert not errors, errors  # every request answered, none reset
        assert 503 in answers, answers
        assert "SIGBUS" not in log.read_text(errors="replace")
        filler.unlink()

        def ingest_again() -> bool:
            event_id = str(uuid.uuid4())
            ok = _send(serve.url, event_id) == 202
            if ok:
                accepted.append(event_id)
            return ok

        wait_until(ingest_again, timeout=90, interval=1.0, message="ingest never recovered")
        repo = SQLiteEventRepository(SQLiteDatabase(data_dir / "events.sqlite3"))
        wanted = [uuid.UUID(i) for i in accepted]
        wait_until(lambda: len(repo.get_many(wanted)) == len(wanted), timeout=90,
                   message="an event answered 202 was not stored")  # fmt: skip
        # A 503 whose command Redis had received may be stored too (README), never twice.
        assert len(wanted) <= repo.count() <= len(wanted) + answers.count(503)
    said = log.read_text(errors="replace")
    assert "SIGBUS" not in said
    assert "the data directory's disk is full" in said  # serve says why, in one line
    assert "analytics: redis: " in said  # and Redis's own words (a short AOF write)
