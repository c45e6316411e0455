"""A damaged SQLite event store (a truncated file): said as such, never a 500 or a healthy
/health/detailed (QA: search answered 500 "see server logs" while health said ok)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from analytics.adapters.sqlite_aggregates import SQLiteAggregateStore
from analytics.adapters.sqlite_store import SQLiteDatabase, SQLiteEventRepository, storage_error
from analytics.domain.errors import StorageUnavailable
from tests.ops_support import make_events
from tests.support import ApiHarness

pytestmark = pytest.mark.integration


def _damaged_store(tmp_path: Path) -> Path:
    path = tmp_path / "events.sqlite3"
    db = SQLiteDatabase(path)
    repo = SQLiteEventRepository(db)
    at = datetime(2026, 3, 1, tzinfo=UTC)
    for day in range(20):
        repo.add_many(make_events(200, at=at + timedelta(days=day), user=f"u{day}"))
    db.connect().execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file
    db.connect().close()
    size = path.stat().st_size
    with path.open("r+b") as f:  # pages of the second half overwritten, as a bad copy can
        for offset in range(size // 2, size - 4096, 4096 * 7):
            f.seek(offset)
            f.write(bytes(range(256)) * 16)
    return path


def test_a_damaged_file_is_storage_unavailable_said_once_and_in_health(tmp_path: Path) -> None:
    path = _damaged_store(tmp_path)
    db = SQLiteDatabase(path)
    repo = SQLiteEventRepository(db)
    h = ApiHarness(event_repo=repo)
    headers = h.headers()
    found = h.client.simulate_get("/api/v1/analytics/events/search", headers=headers, params={
        "start": "2026-03-01T00:00:00Z", "end": "2026-03-25T00:00:00Z", "limit": "1000"})  # fmt: skip
    assert found.status_code == 503, found.text  # was a 500 "see server logs"
    assert "damaged" in found.json["detail"] and "Backups" in found.json["detail"]
    health = h.client.simulate_get("/health/detailed", headers=headers).json
    assert health["checks"]["storage"]["status"] == "down", health
    assert "damaged" in health["checks"]["storage"]["error"]
    assert health["status"] != "ok"
    with pytest.raises(StorageUnavailable, match="damaged"):  # a generator method too
        list(repo.iter_range(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 25, tzinfo=UTC)))


def test_a_bug_is_not_dressed_as_an_outage(tmp_path: Path) -> None:
    """Only the store's own failures become StorageUnavailable (503, retried by workers):
    a constraint or programming error stays what it is, and only damage marks the file."""
    db = SQLiteDatabase(tmp_path / "events.sqlite3")
    bug = sqlite3.IntegrityError("UNIQUE constraint failed")
    assert storage_error(bug, db) is bug
    locked = storage_error(sqlite3.OperationalError("database is locked"), db)
    assert isinstance(locked, StorageUnavailable) and db.damaged is None
    damaged = storage_error(sqlite3.DatabaseError("database disk image is malformed"), db)
    assert isinstance(damaged, StorageUnavailable) and db.damaged == str(damaged)
    with pytest.raises(StorageUnavailable, match="damaged"):  # what the health check asks
        SQLiteEventRepository(db).count()
    assert hasattr(SQLiteAggregateStore.apply, "__wrapped__")  # the aggregates too


def test_a_truncated_file_is_said_damaged_at_start(tmp_path: Path) -> None:
    path = _damaged_store(tmp_path)
    with path.open("r+b") as f:  # and the second half cut off: the header's size is wrong
        f.truncate(path.stat().st_size // 2)
    with pytest.raises(StorageUnavailable, match="damaged .* restore it from a backup"):
        SQLiteDatabase(path)
