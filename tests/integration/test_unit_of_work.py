"""SQLite: the event and its counts commit together (one transaction, one fsync)."""

from __future__ import annotations

from pathlib import Path

import pytest

from analytics.adapters.sqlite_aggregates import SQLiteAggregateStore
from analytics.adapters.sqlite_store import SQLiteDatabase, SQLiteEventRepository
from analytics.application.store_events import store_events
from analytics.bootstrap import shared_unit_of_work
from analytics.domain.errors import StorageUnavailable
from tests.integration.test_background_processing import make_event


class FailingApply(SQLiteAggregateStore):
    def apply(self, contributions):  # type: ignore[no-untyped-def]
        super().apply(contributions)
        raise StorageUnavailable("disk full, say")


def test_a_failed_count_rolls_back_the_event_too(tmp_path: Path) -> None:
    db = SQLiteDatabase(tmp_path / "e.sqlite3")
    repo, broken = SQLiteEventRepository(db), FailingApply(db)
    uow = shared_unit_of_work(repo, broken)
    assert uow is db
    events = [make_event(i) for i in range(3)]
    with pytest.raises(StorageUnavailable):
        store_events(events, repo=repo, aggregates=broken, uow=uow)
    assert repo.count() == 0  # nothing half-done: the retry starts from scratch
    healthy = SQLiteAggregateStore(db)
    result = store_events(events, repo=repo, aggregates=healthy, uow=uow)
    assert (result.stored, result.counted) == (3, 3)
    again = store_events(events, repo=repo, aggregates=healthy, uow=uow)
    assert (again.stored, again.counted, again.duplicates) == (0, 0, 3)


def test_stores_on_different_databases_get_no_shared_unit(tmp_path: Path) -> None:
    a = SQLiteEventRepository(SQLiteDatabase(tmp_path / "a.sqlite3"))
    b = SQLiteAggregateStore(SQLiteDatabase(tmp_path / "b.sqlite3"))
    assert shared_unit_of_work(a, b) is None
