"""SQLite writers of every process queue on one flock (``<db>.writer``), not on SQLite's
busy handler; a writer that dies drops it, and a lock held too long is StorageUnavailable."""

from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from pathlib import Path

import pytest

from analytics.adapters.sqlite_keys import SQLiteApiKeyStore
from analytics.adapters.sqlite_store import SQLiteDatabase, SQLiteEventRepository
from analytics.domain.errors import StorageUnavailable
from tests.integration.test_background_processing import make_event

ctx = mp.get_context("fork")


def _hold(db: SQLiteDatabase, holding: object, release: object) -> None:
    """In a forked child, with the parent's SQLiteDatabase object: write and hold."""
    with db.transaction() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
        holding.set()  # type: ignore[attr-defined]
        release.wait(30)  # type: ignore[attr-defined]


def _locked_by_someone(path: Path) -> bool:
    fd = os.open(path.with_name(path.name + ".writer"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops our lock, if we got it
    return False


@pytest.fixture
def db(tmp_path: Path) -> SQLiteDatabase:
    db = SQLiteDatabase(tmp_path / "e.sqlite3", busy_timeout_s=10)
    SQLiteEventRepository(db).add_many([make_event(0)])  # the parent has written: fd open
    return db


def test_a_transaction_in_another_process_holds_the_writer_lock(db: SQLiteDatabase) -> None:
    holding, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold, args=(db, holding, release))
    child.start()
    try:
        assert holding.wait(10)
        assert _locked_by_someone(db.path)  # the child reopened the file: its own lock
        done = threading.Event()

        def write() -> None:
            SQLiteEventRepository(db).add_many([make_event(1)])
            done.set()

        writer = threading.Thread(target=write)
        writer.start()
        assert not done.wait(0.3)  # waits for the other process's commit
        release.set()
        assert done.wait(10)
        writer.join(10)
    finally:
        release.set()
        child.join(10)
    assert not _locked_by_someone(db.path)
    assert SQLiteEventRepository(db).count() == 2


def test_the_lock_of_a_writer_killed_mid_transaction_is_released(db: SQLiteDatabase) -> None:
    holding, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold, args=(db, holding, release))
    child.start()
    assert holding.wait(10)
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    assert not _locked_by_someone(db.path)
    event = make_event(1)
    assert SQLiteEventRepository(db).add_many([event]) == [event.event_id]


def test_a_writer_lock_held_past_the_busy_timeout_is_storage_unavailable(
    tmp_path: Path, db: SQLiteDatabase
) -> None:
    impatient = SQLiteDatabase(db.path, busy_timeout_s=0.2)
    holding, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold, args=(db, holding, release))
    child.start()
    try:
        assert holding.wait(10)
        t0 = time.monotonic()
        with pytest.raises(StorageUnavailable, match="writer lock"):
            SQLiteEventRepository(impatient).add_many([make_event(1)])
        assert time.monotonic() - t0 < 5
    finally:
        release.set()
        child.join(10)
    assert SQLiteEventRepository(impatient).add_many([make_event(1)])  # free again


def test_checkpoints_run_every_few_commits_and_outside_the_writer_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from analytics.adapters import sqlite_store  # noqa: PLC0415

    db = SQLiteDatabase(tmp_path / "c.sqlite3")
    assert db.connect().execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)  # ours only
    held: list[bool] = []
    real = SQLiteDatabase.checkpoint

    def spy(self: SQLiteDatabase, conn: object = None) -> None:
        held.append(_locked_by_someone(self.path))  # another descriptor: sees our flock too
        real(self, conn)  # type: ignore[arg-type]

    monkeypatch.setattr(SQLiteDatabase, "checkpoint", spy)
    repo = SQLiteEventRepository(db)
    size = db.path.stat().st_size
    for i in range(sqlite_store.CHECKPOINT_EVERY - 1):
        repo.add_many([make_event(i)])
    assert held == [] and db.path.stat().st_size == size  # all in the WAL so far
    repo.add_many([make_event(99)])
    assert held == [False]  # one checkpoint, with the writer lock released
    assert db.path.stat().st_size > size  # the pages reached the database file
    assert repo.count() == sqlite_store.CHECKPOINT_EVERY


def _open_at_once(kind: str, path: str, go: object, results: object) -> None:
    # Nothing imported here: a child forked from this multi-threaded process (pytest-xdist's
    # execnet threads) can hang on an import lock another thread held at the fork; a child
    # that never reported made one CI run fail on the queue's timeout.
    go.wait(10)  # type: ignore[attr-defined]
    try:
        if kind == "events":
            SQLiteEventRepository(SQLiteDatabase(Path(path)))
        else:
            SQLiteApiKeyStore(Path(path))
        results.put("ok")  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        results.put(repr(exc))  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["events", "keys"])
def test_processes_opening_a_new_database_at_once_all_get_it(kind: str, tmp_path: Path) -> None:
    """``analytics serve`` starts the API's and the worker's processes together, and each
    opens the new database and switches it to WAL; SQLite refused the ones that came
    during another's switch at once ("database is locked"), and a worker process died at
    boot. Eight processes, released together, twenty times: every one opens it."""
    failures = []
    for trial in range(20):
        go, results = ctx.Event(), ctx.Queue()
        path = tmp_path / f"{trial}" / f"{kind}.sqlite3"
        procs = [ctx.Process(target=_open_at_once, args=(kind, str(path), go, results))
                 for _ in range(8)]  # fmt: skip
        for p in procs:
            p.start()
        time.sleep(0.05)
        go.set()
        # Each child may wait out SQLite's busy timeout (30 s) more than once while the
        # others switch the file to WAL; beside the fault suite's fsyncs on the same disk a
        # child took longer than 60 s in two CI runs (alone: under a second). A hang still
        # fails, naming the children that never reported.
        try:
            failures += [r for r in (results.get(timeout=180) for _ in procs) if r != "ok"]
        except queue.Empty:
            alive = [p.pid for p in procs if p.is_alive()]
            raise AssertionError(f"trial {trial}: children {alive} never reported") from None
        for p in procs:
            p.join(10)
    assert failures == []
