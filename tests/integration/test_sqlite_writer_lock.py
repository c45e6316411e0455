"""SQLite writers of every process queue on one flock (``<db>.writer``), not on SQLite's
busy handler; a writer that dies drops it, and a lock held too long is StorageUnavailable.

The tests that fork run in a process of their own (:func:`in_clean_process`), started by
a fork server: pytest-xdist's worker carries threads of earlier tests, and a child forked
while one of them was inside SQLite (closing a connection: its VFS and allocator mutexes)
inherits the mutex locked and hangs in its first ``sqlite3.connect``, for ever. Two CI
runs failed on such a child. The service never forks a process that uses SQLite (gunicorn
and dramatiq fork before the app is built; ``serve`` execs its children).
"""

from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from analytics.adapters.sqlite_keys import SQLiteApiKeyStore
from analytics.adapters.sqlite_store import SQLiteDatabase, SQLiteEventRepository
from analytics.domain.errors import StorageUnavailable
from tests.integration.test_background_processing import make_event

ctx = mp.get_context("fork")  # only ever from a process in_clean_process started
clean = mp.get_context("forkserver")
clean.set_forkserver_preload([__name__])  # the server imports this module once


def _report(fn: Callable[..., None], results: Any, args: tuple[Any, ...]) -> None:
    try:
        fn(*args)
        results.put(None)
    except BaseException:  # noqa: BLE001 - the whole failure goes to the test
        results.put(traceback.format_exc())


def in_clean_process(fn: Callable[..., None], *args: Any, timeout: float = 300) -> None:
    """Run ``fn(*args)`` in a new single-threaded process; its failure fails the test."""
    results = clean.Queue()
    proc = clean.Process(target=_report, args=(fn, results, args))
    proc.start()
    try:
        failure = results.get(timeout=timeout)  # against a hang, not a timing assertion
    except queue.Empty:
        failure = f"no answer in {timeout} s"
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    if failure is not None:
        pytest.fail(failure, pytrace=False)


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


def _written_db(tmp: str) -> SQLiteDatabase:
    db = SQLiteDatabase(Path(tmp) / "e.sqlite3", busy_timeout_s=10)
    SQLiteEventRepository(db).add_many([make_event(0)])  # the parent has written: fd open
    return db


def _another_process_holds_the_writer_lock(tmp: str) -> None:
    db = _written_db(tmp)
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


def test_a_transaction_in_another_process_holds_the_writer_lock(tmp_path: Path) -> None:
    in_clean_process(_another_process_holds_the_writer_lock, str(tmp_path))


def _killed_writer_releases(tmp: str) -> None:
    db = _written_db(tmp)
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


def test_the_lock_of_a_writer_killed_mid_transaction_is_released(tmp_path: Path) -> None:
    in_clean_process(_killed_writer_releases, str(tmp_path))


def _held_past_the_busy_timeout(tmp: str) -> None:
    db = _written_db(tmp)
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


def test_a_writer_lock_held_past_the_busy_timeout_is_storage_unavailable(tmp_path: Path) -> None:
    in_clean_process(_held_past_the_busy_timeout, str(tmp_path))


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


def padded(i: int) -> Any:
    return msgspec.structs.replace(make_event(i), metadata={"pad": "x" * 1500})


def test_a_wal_past_its_limit_is_emptied_once_the_readers_let_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Soak: steady reads beside steady writes never let SQLite start the WAL over, and a
    PASSIVE checkpoint never empties it: 1.17 GB beside a 463 MB database after 20 min.
    While a reader holds an older snapshot nothing is tried (review: a TRUNCATE waiting
    for it at every checkpoint held every writer, 80 commits 0.04 s -> 4.1 s)."""
    limit = 64 * 1024
    db = SQLiteDatabase(tmp_path / "w.sqlite3", wal_limit_bytes=limit)
    repo = SQLiteEventRepository(db)
    tries: list[int] = []
    real = SQLiteDatabase._truncate_wal
    monkeypatch.setattr(SQLiteDatabase, "_truncate_wal",
                        lambda self, conn: tries.append(self.wal_bytes()) or real(self, conn))  # fmt: skip
    reading, done = threading.Event(), threading.Event()

    def reader() -> None:  # a long read: its snapshot keeps every frame in the WAL
        conn = db.connect()
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM events").fetchone()
        reading.set()
        done.wait(30)
        conn.execute("COMMIT")

    thread = threading.Thread(target=reader)
    thread.start()
    assert reading.wait(10)
    for i in range(60):  # checkpoints run (every CHECKPOINT_EVERY commits) and cannot empty it
        repo.add_many([padded(i)])
    grown = db.wal_bytes()
    assert grown > limit and tries == []  # the reader's snapshot: no TRUNCATE tried
    done.set()
    thread.join()
    db.checkpoint()  # no writer in between: only the TRUNCATE checkpoint empties the file
    assert db.wal_bytes() == 0 and len(tries) == 1
    for i in range(60, 120):  # and with nobody in the way it stays near its limit
        repo.add_many([padded(i)])
    assert db.wal_bytes() <= limit + grown // 60 * 8
    assert repo.count() == 120


def _open_at_once(kind: str, path: str, go: object, results: object) -> None:
    go.wait(10)  # type: ignore[attr-defined]
    try:
        if kind == "events":
            SQLiteEventRepository(SQLiteDatabase(Path(path)))
        else:
            SQLiteApiKeyStore(Path(path))
        results.put("ok")  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        results.put(repr(exc))  # type: ignore[attr-defined]


def _eight_open_at_once(kind: str, tmp: str) -> None:
    failures = []
    for trial in range(20):
        go, results = ctx.Event(), ctx.Queue()
        path = Path(tmp) / f"{trial}" / f"{kind}.sqlite3"
        procs = [ctx.Process(target=_open_at_once, args=(kind, str(path), go, results))
                 for _ in range(8)]  # fmt: skip
        for p in procs:
            p.start()
        time.sleep(0.05)
        go.set()
        # Each child may wait out SQLite's busy timeout (30 s) while the others switch the
        # file to WAL (alone: all done in under a second). A hang fails, naming the child.
        try:
            failures += [r for r in (results.get(timeout=120) for _ in procs) if r != "ok"]
        except queue.Empty:
            alive = [p.pid for p in procs if p.is_alive()]
            raise AssertionError(f"trial {trial}: children {alive} never reported") from None
        for p in procs:
            p.join(10)
    assert failures == []


@pytest.mark.parametrize("kind", ["events", "keys"])
def test_processes_opening_a_new_database_at_once_all_get_it(kind: str, tmp_path: Path) -> None:
    """``analytics serve`` starts the API's and the worker's processes together, and each
    opens the new database and switches it to WAL; SQLite refused the ones that came
    during another's switch at once ("database is locked"), and a worker process died at
    boot. Eight processes, released together, twenty times: every one opens it."""
    in_clean_process(_eight_open_at_once, kind, str(tmp_path), timeout=600)


def test_the_truncate_waits_briefly_restores_the_busy_timeout_and_is_tried_at_most_every_5_s(
    tmp_path: Path,
) -> None:
    """Mutation QA: the TRUNCATE's short busy timeout (writers wait behind it), restoring
    the connection's own, the size boundary, the 5 s spacing and journal_size_limit were
    untested."""
    db = SQLiteDatabase(tmp_path / "t.sqlite3", busy_timeout_s=30.0, wal_limit_bytes=1 << 40)
    repo = SQLiteEventRepository(db)
    conn = db.connect()
    assert conn.execute("PRAGMA journal_size_limit").fetchone() == (1 << 40,)
    for i in range(3):  # below CHECKPOINT_EVERY: no checkpoint of the writers' own yet
        repo.add_many([padded(i)])
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    db.wal_limit_bytes = db.wal_bytes()  # at the limit, not past it: nothing to empty
    db.checkpoint()
    assert not [s for s in statements if "TRUNCATE" in s]
    db.wal_limit_bytes = db.wal_bytes() - 1
    db.checkpoint()
    assert [s for s in statements if "busy_timeout" in s or "TRUNCATE" in s] == [
        "PRAGMA busy_timeout=200", "PRAGMA wal_checkpoint(TRUNCATE)", "PRAGMA busy_timeout=30000",
    ]  # fmt: skip
    assert db.wal_bytes() == 0
    statements.clear()
    repo.add_many([padded(9)])  # past the limit again at once: the next try waits 5 s
    db.wal_limit_bytes = 1
    db.checkpoint()
    assert not [s for s in statements if "TRUNCATE" in s]
    conn.set_trace_callback(None)
