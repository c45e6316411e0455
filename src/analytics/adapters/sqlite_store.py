"""SQLite adapters: the embedded default's event store.

WAL mode, one connection per thread, ``synchronous=FULL`` so that a committed batch
survives a crash: the worker acknowledges its message only after the commit.

Writers queue for the database on locks, not on SQLite's busy handler: a thread lock per
file in each process, then an ``flock`` on ``<file>.writer`` shared by every process of
this code (the worker's processes, the API's key and retention writes). SQLite's handler
retries BEGIN IMMEDIATE after sleeps of 1, 2, 5, 10, 15, 20, 25... ms, so a process that
met the other one's commit (a few ms of fsync) slept past its end, and the database sat
idle between the two processes' commits; the ``flock`` is taken again within a fraction
of a millisecond of its release. The busy handler still covers writers that do not take
the ``flock`` (another program on the file), and the kernel drops the lock of a process
that dies, so a crash never leaves it held.

Checkpoints run outside that lock. SQLite's automatic checkpoint (every 1,000 WAL pages)
runs inside the COMMIT that crosses the mark, copying pages into the database file and
fsyncing it, which kept the lock held for several more milliseconds while the other
processes waited; SQLite itself lets a writer go on during a checkpoint. So our writers
turn it off and, after every ``CHECKPOINT_EVERY`` commits of a process, run a PASSIVE
checkpoint once the lock is released (a checkpoint never changes what is committed).

A PASSIVE checkpoint copies the WAL back but never starts it over: a writer starts the
WAL file from its beginning only when everything is copied and no reader still reads
from it, which steady reads beside steady writes almost never allow (a 20-minute soak
at 300 events/s: a 1.17 GB WAL beside a 463 MB database, never shrinking). So once the
file passes ``WAL_LIMIT_BYTES`` and a PASSIVE checkpoint copied every frame (no reader on
an older snapshot), a TRUNCATE one follows between two writers' commits (the writer lock
held, at most every ``TRUNCATE_EVERY_S``): it waits a moment for the readers still on the
WAL (new ones read the database file once all is copied) and empties the file;
``journal_size_limit`` trims it to that size whenever SQLite starts it over itself.
"""

from __future__ import annotations

import fcntl
import functools
import inspect
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from analytics.adapters import codec
from analytics.domain.errors import StorageUnavailable
from analytics.domain.events import Event
from analytics.domain.search import EventQuery, SearchKey

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id    TEXT PRIMARY KEY,
    ts_us       INTEGER NOT NULL,
    event_type  TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    session_id  TEXT,
    product_id  TEXT,
    received_us INTEGER NOT NULL,
    body        BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_by_ts      ON events (ts_us, event_id);
CREATE INDEX IF NOT EXISTS events_by_type    ON events (event_type, ts_us, event_id);
CREATE INDEX IF NOT EXISTS events_by_user    ON events (user_id, ts_us, event_id);
CREATE INDEX IF NOT EXISTS events_by_session ON events (session_id, ts_us, event_id);
CREATE INDEX IF NOT EXISTS events_by_product ON events (product_id, ts_us, event_id);
CREATE INDEX IF NOT EXISTS events_by_received ON events (received_us);
"""


def to_us(dt: datetime) -> int:
    """Microseconds since the epoch: exact, sortable, no float."""
    return (dt - _EPOCH) // _US


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


class _WriterLock:
    """The writer lock of one database file: a thread lock for this process's writers,
    then an ``flock`` for the other processes' (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.thread_lock = threading.Lock()
        self.path = path.with_name(path.name + ".writer")
        self._fd = -1
        self._pid = 0
        self.commits = 0  # since the last checkpoint, in this process (under thread_lock)
        self.truncated_at = float("-inf")  # monotonic time of the last TRUNCATE attempt

    def _file(self) -> int:
        # A descriptor inherited through fork shares its flock with the parent: reopen.
        if self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd

    def acquire(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if not self.thread_lock.acquire(timeout=timeout):
            return False
        try:
            if self._lock_file(deadline):
                return True
        except BaseException:
            self.thread_lock.release()
            raise
        self.thread_lock.release()
        return False

    def _lock_file(self, deadline: float) -> bool:
        fd, pause = self._file(), 0.0001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
            # Another process commits (a few ms): look again soon, then every 1 ms.
            time.sleep(pause)
            pause = min(pause * 2, 0.001)

    def release(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self.thread_lock.release()


CHECKPOINT_EVERY = 4  # commits per process and file (the worker's: ~250 WAL pages each)
WAL_LIMIT_BYTES = 64 * 1024 * 1024  # a WAL file past this is emptied (module docstring)
TRUNCATE_WAIT_S = 0.2  # how long a TRUNCATE checkpoint waits for readers, writers waiting
TRUNCATE_EVERY_S = 5.0  # at most one such wait per process and file in this time

_WRITE_LOCKS: dict[str, _WriterLock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


def _write_lock(path: Path) -> _WriterLock:
    """One writer lock per database file per process, shared by every SQLiteDatabase on it."""
    key = str(path.resolve())
    with _WRITE_LOCKS_GUARD:
        lock = _WRITE_LOCKS.get(key)
        if lock is None:
            lock = _WRITE_LOCKS[key] = _WriterLock(Path(key))
        return lock


def use_wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    """``journal_mode=WAL``, waiting out another process that is doing the same.

    Switching a new database to WAL takes an exclusive lock, and SQLite answers "database
    is locked" at once, without its busy handler, to a connection that tries meanwhile:
    ``analytics serve`` opens the file from the API's and the worker's processes at the
    same moment, and a worker process died at boot of it. Tried again until ``timeout_s``
    (the busy timeout), like any other lock.
    """
    deadline = time.monotonic() + timeout_s
    pause = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


class SQLiteDatabase:
    """Thread-local connections to one database file, with the schema applied once."""

    def __init__(
        self, path: Path, *, busy_timeout_s: float = 30.0, wal_limit_bytes: int = WAL_LIMIT_BYTES
    ) -> None:
        self.path = Path(path)
        self.wal_limit_bytes = wal_limit_bytes
        self.damaged: str | None = None  # what a damaged file said, once one was met
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._write_lock = _write_lock(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.connect().executescript(SCHEMA)  # idempotent DDL; commits itself
        except sqlite3.DatabaseError as exc:  # a damaged file says so at start
            raise_storage_error(exc, self)

    def connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout_s, isolation_level=None,
                check_same_thread=False,
            )  # fmt: skip
            use_wal(conn, self.busy_timeout_s)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA wal_autocheckpoint=0")  # ours, outside the writer lock
            conn.execute(f"PRAGMA journal_size_limit={self.wal_limit_bytes}")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; a nested call joins the open one (the outermost commits),
        so a use case can make several adapters' writes one atomic, fsynced commit."""
        depth = getattr(self._local, "depth", 0)
        if depth:
            self._local.depth = depth + 1
            try:
                yield self.connect()
            finally:
                self._local.depth = depth
            return
        # Writers queue on the writer lock instead of on SQLite's busy handler, which
        # sleeps in coarse steps (up to 100 ms) and starved the worker (module docstring).
        self._lock_writer()
        checkpoint = False
        try:
            try:
                conn = self.connect()
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StorageUnavailable(f"sqlite: {exc}") from exc
            self._local.depth = 1
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            finally:
                self._local.depth = 0
            try:
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                conn.execute("ROLLBACK")
                raise StorageUnavailable(f"sqlite commit: {exc}") from exc
            self._write_lock.commits += 1
            if self._write_lock.commits >= CHECKPOINT_EVERY:
                self._write_lock.commits, checkpoint = 0, True
        finally:
            self._write_lock.release()
        if checkpoint:
            self.checkpoint(conn)

    def checkpoint(self, conn: sqlite3.Connection | None = None) -> None:
        """A PASSIVE checkpoint: copy what it can into the database file, wait for nobody
        (a reader or another checkpoint in the way: the next one catches up); a TRUNCATE
        one when the WAL file has grown past ``wal_limit_bytes`` (module docstring)."""
        conn = conn or self.connect()
        try:
            busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.OperationalError:
            return  # busy or locked: committed data is safe in the WAL either way
        # Only when everything was copied: a reader still on an older snapshot (a backup,
        # reconcile's read, a long search) would make the TRUNCATE wait its full time with
        # every writer held, at every checkpoint (review: 80 commits 0.04 s -> 4.1 s).
        if busy or copied != frames or self.wal_bytes() <= self.wal_limit_bytes:
            return
        now = time.monotonic()
        if now - self._write_lock.truncated_at < TRUNCATE_EVERY_S:
            return
        self._write_lock.truncated_at = now
        self._truncate_wal(conn)

    def wal_bytes(self) -> int:
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

    def _truncate_wal(self, conn: sqlite3.Connection) -> None:
        try:
            if not self._write_lock.acquire(timeout=TRUNCATE_WAIT_S):
                return  # writers are busy: the next checkpoint tries again
        except OSError:
            return
        try:
            conn.execute(f"PRAGMA busy_timeout={int(TRUNCATE_WAIT_S * 1000)}")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # busy: tried again next time
        except sqlite3.OperationalError:
            pass
        finally:
            try:
                conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            finally:
                self._write_lock.release()

    def _lock_writer(self) -> None:
        try:
            locked = self._write_lock.acquire(timeout=self.busy_timeout_s)
        except OSError as exc:  # the lock file cannot be opened or locked
            raise StorageUnavailable(f"sqlite writer lock: {exc}") from exc
        if not locked:
            raise StorageUnavailable("sqlite: timed out waiting for the database's writer lock")

    def atomic(self) -> AbstractContextManager[object]:
        """The UnitOfWork port: everything inside commits together."""
        return self.transaction()

    def read(self) -> sqlite3.Connection:
        return self.connect()


#: SQLite's result codes for a database file that is not (any more) what it wrote.
_DAMAGED = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def storage_error(exc: sqlite3.DatabaseError, db: SQLiteDatabase | None) -> Exception:
    """What a failed SQLite call means to a caller: unavailable (locked, I/O, full: a retry
    may work, 503 meanwhile), damaged (the file is corrupt or truncated: unavailable until
    an operator restores it, said as such, once in the log and in /health/detailed), or
    the error itself (a constraint or programming error: a bug, not the store)."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF  # the primary code
    if code in _DAMAGED or (type(exc) is sqlite3.DatabaseError and "malformed" in str(exc)):
        detail = (f"sqlite: the database file is damaged ({exc}); stop the service and restore "
                  "it from a backup (README 'Backups') or recover it with sqlite3's .recover")  # fmt: skip
        if db is not None and db.damaged is None:
            db.damaged = detail
            import structlog  # noqa: PLC0415

            structlog.get_logger("analytics.storage").critical(
                "event store damaged", path=str(db.path), error=str(exc))  # fmt: skip
        return StorageUnavailable(detail, public=detail)  # SQLite's words carry no path
    if isinstance(exc, sqlite3.OperationalError):
        return StorageUnavailable(f"sqlite: {exc}")
    return exc


def raise_storage_error(exc: sqlite3.DatabaseError, db: SQLiteDatabase | None) -> NoReturn:
    """Raise :func:`storage_error`'s answer for ``exc`` (``exc`` itself when it is a bug)."""
    translated = storage_error(exc, db)
    if translated is exc:
        raise exc
    raise translated from exc


def translating_sqlite_errors(cls: type[T]) -> type[T]:
    """Every public method of a SQLite adapter (``self.db``: its SQLiteDatabase) raises
    :func:`storage_error`'s answer instead of sqlite3's own: a damaged file gave a 500
    from search and a healthy /health/detailed (QA), and each method had its own
    ``except`` for locked or I/O errors (some none: a 500)."""
    for name, fn in list(vars(cls).items()):
        if name.startswith("_") or not inspect.isfunction(fn):
            continue
        setattr(cls, name, _translating(fn))
    return cls


def _translating(fn: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                yield from fn(self, *args, **kwargs)
            except sqlite3.DatabaseError as exc:
                raise_storage_error(exc, getattr(self, "db", None))

        return gen

    @functools.wraps(fn)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            raise_storage_error(exc, getattr(self, "db", None))

    return call


@translating_sqlite_errors
class SQLiteEventRepository:
    def __init__(self, db: SQLiteDatabase) -> None:
        self.db = db

    def add_many(self, events: Sequence[Event]) -> list[uuid.UUID]:
        if not events:
            return []
        new: list[uuid.UUID] = []
        sql = (
            "INSERT INTO events (event_id, ts_us, event_type, user_id, session_id, product_id,"
            " received_us, body) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(event_id) DO NOTHING"
        )
        with self.db.transaction() as conn:
            for e in events:
                cur = conn.execute(
                    sql,
                    (
                        str(e.event_id), to_us(e.timestamp), e.event_type, e.user_id,
                        e.session_id, e.product_id, to_us(e.received_at), codec.encode(e),
                    ),
                )  # fmt: skip
                if cur.rowcount == 1:
                    new.append(e.event_id)
        return new

    def get_many(self, event_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Event]:
        ids = [str(i) for i in event_ids]
        out: dict[uuid.UUID, Event] = {}
        conn = self.db.read()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for (body,) in conn.execute(
                f"SELECT body FROM events WHERE event_id IN ({marks})",  # noqa: S608 - placeholders only
                chunk,
            ):
                e = codec.decode_event(body)
                out[e.event_id] = e
        return out

    def count(self) -> int:
        """The number of stored events; what the storage health check asks, so a file met
        damaged once (by any call of this process) answers as damaged here too, though a
        count can still read the pages it needs."""
        if self.db.damaged:
            raise StorageUnavailable(self.db.damaged, public=self.db.damaged)
        return int(self.db.read().execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def purge_before(self, cutoff: datetime, *, batch: int = 5000) -> int:
        """Delete events older than ``cutoff`` in short transactions (writers are not starved)."""
        limit = to_us(cutoff)
        total = 0
        sql = (
            "DELETE FROM events WHERE event_id IN "
            "(SELECT event_id FROM events WHERE ts_us < ? LIMIT ?)"
        )
        while True:
            with self.db.transaction() as conn:
                deleted = conn.execute(sql, (limit, batch)).rowcount
            total += deleted
            if deleted < batch:
                return total

    def iter_range(
        self, start: datetime, end: datetime, *, page_size: int = 1000
    ) -> Iterator[Event]:
        """Keyset pages over the (ts_us, event_id) index: no scan, no OFFSET."""
        lo, hi = to_us(start), to_us(end)
        after: tuple[int, str] | None = None
        conn = self.db.read()
        while True:
            if after is None:
                rows = conn.execute(
                    "SELECT ts_us, event_id, body FROM events WHERE ts_us >= ? AND ts_us < ?"
                    " ORDER BY ts_us, event_id LIMIT ?",
                    (lo, hi, page_size),
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT ts_us, event_id, body FROM events WHERE (ts_us, event_id) > (?, ?)"
                    " AND ts_us < ? ORDER BY ts_us, event_id LIMIT ?",
                    (*after, hi, page_size),
                ).fetchall()
            for _, _, body in rows:
                yield codec.decode_event(body)
            if len(rows) < page_size:
                return
            after = (rows[-1][0], rows[-1][1])

    # Index per filter, most selective first: the first filter given picks the index and
    # the others are checked on the rows it yields. Every index ends in (ts_us, event_id),
    # so the ORDER BY and the keyset condition are served by the index itself.
    SEARCH_INDEXES = (
        ("user_id", "events_by_user"),
        ("session_id", "events_by_session"),
        ("product_id", "events_by_product"),
        ("event_type", "events_by_type"),
    )

    def search_sql(
        self, query: EventQuery, *, after: SearchKey | None, limit: int
    ) -> tuple[str, list[object]]:
        """The SQL and parameters of :meth:`search` (public for the query-plan test)."""
        index = "events_by_ts"
        where: list[str] = []
        args: list[object] = []
        for column, name in reversed(self.SEARCH_INDEXES):
            value = getattr(query, column)
            if value is not None:
                index = name
        for column, _ in self.SEARCH_INDEXES:
            value = getattr(query, column)
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        # A cursor's key is never below ``start``: the keyset bound replaces it, so the index
        # seeks straight to the page instead of walking from ``start`` to the cursor.
        if query.start is not None and (after is None or after.timestamp < query.start):
            where.append("ts_us >= ?")
            args.append(to_us(query.start))
        if query.end is not None:
            where.append("ts_us < ?")
            args.append(to_us(query.end))
        if after is not None:
            where.append("(ts_us, event_id) > (?, ?)")
            args.extend([to_us(after.timestamp), str(after.event_id)])
        sql = f"SELECT body FROM events INDEXED BY {index}"  # noqa: S608 - fixed names only
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts_us, event_id LIMIT ?"
        args.append(limit)
        return sql, args

    def search(self, query: EventQuery, *, after: SearchKey | None, limit: int) -> list[Event]:
        sql, args = self.search_sql(query, after=after, limit=limit)
        rows = self.db.read().execute(sql, args).fetchall()
        return [codec.decode_event(body) for (body,) in rows]
