"""Retention purge: the EventRepository contract on every adapter (memory, SQLite)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from analytics.adapters.memory import InMemoryEventRepository
from analytics.adapters.sqlite_store import SQLiteDatabase, SQLiteEventRepository
from analytics.application.retention import purge_events_before
from analytics.bootstrap import bootstrap
from analytics.domain.errors import PermanentError
from analytics.domain.ports import EventRepository
from analytics.entrypoints.actors import register_actors
from analytics.settings import Settings
from tests.ops_support import make_events

pytestmark = pytest.mark.unit
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> EventRepository:
    if request.param == "memory":
        return InMemoryEventRepository()
    return SQLiteEventRepository(SQLiteDatabase(tmp_path / "e.sqlite3"))


def test_purge_deletes_only_events_before_the_cutoff(repo: EventRepository) -> None:
    old = make_events(7, at=NOW - timedelta(days=100))
    new = make_events(5, at=NOW)
    repo.add_many(old + new)
    cutoff = NOW - timedelta(days=90)
    assert purge_events_before(cutoff, repo=repo) == 7
    assert repo.count() == 5
    assert set(repo.get_many(e.event_id for e in new)) == {e.event_id for e in new}
    assert purge_events_before(cutoff, repo=repo) == 0  # idempotent: a rerun deletes nothing


def test_sqlite_purges_in_batches(tmp_path: Path) -> None:
    repo = SQLiteEventRepository(SQLiteDatabase(tmp_path / "e.sqlite3"))
    repo.add_many(make_events(25, at=NOW - timedelta(days=400)))
    assert repo.purge_before(NOW, batch=10) == 25
    assert repo.count() == 0


def test_naive_cutoff_is_refused(repo: EventRepository) -> None:
    with pytest.raises(ValueError, match="timezone"):
        purge_events_before(datetime(2026, 1, 1), repo=repo)  # noqa: DTZ001


def test_a_store_that_expires_events_itself_purges_nothing() -> None:
    class TtlStore:  # like the DynamoDB repository: retention by TTL, no purge method
        pass

    assert purge_events_before(NOW, repo=TtlStore()) == 0  # type: ignore[arg-type]


def test_the_purge_actor_refuses_a_naive_cutoff_as_permanent() -> None:
    """Mutation QA: a cutoff without a UTC offset (``2026-01-01T00:00:00``) can never be
    purged: the actor raises PermanentError (its ``throws``) naming the cutoff, so the
    message goes straight to the dead-letter queue with the reason, instead of a bare
    ValueError retried (and logged) on every backoff until its retries run out."""
    container = bootstrap(Settings(broker="stub", storage="memory"))
    purge = register_actors(container)["purge_events_before"]
    assert PermanentError in purge.options["throws"]
    container.event_repo.add_many(make_events(3, at=NOW - timedelta(days=400)))
    with pytest.raises(PermanentError, match="2026-01-01T00:00:00.*no UTC offset"):
        purge.fn("2026-01-01T00:00:00")
    assert container.event_repo.count() == 3
    assert purge.fn("2026-01-01T00:00:00+00:00") == {
        "cutoff": "2026-01-01T00:00:00+00:00", "deleted": 3,
    }  # fmt: skip
