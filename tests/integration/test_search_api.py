"""GET /api/v1/analytics/events/search over the real app (TestClient) on SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import falcon.testing
import pytest

from analytics.bootstrap import Container, bootstrap
from analytics.domain.events import Event
from analytics.entrypoints.api.app import create_app
from analytics.settings import Settings
from tests.integration.test_event_repository_contract import T0, make_event

URL = "/api/v1/analytics/events/search"


@pytest.fixture
def container(data_dir: Path) -> Container:
    settings = Settings(broker="stub", storage="sqlite", data_dir=data_dir, auth="disabled")
    return bootstrap(settings)


@pytest.fixture
def client(container: Container) -> Iterator[falcon.testing.TestClient]:
    yield falcon.testing.TestClient(create_app(container))


@pytest.fixture
def events(container: Container) -> list[Event]:
    evs = [
        make_event(T0 + timedelta(seconds=i), event_type=("purchase", "page_view")[i % 2],
                   user=f"u{i % 3}", product=f"p{i % 2}")
        for i in range(30)
    ]  # fmt: skip
    container.event_repo.add_many(evs)
    return evs


def get(client: falcon.testing.TestClient, query: str):  # type: ignore[no-untyped-def]
    return client.simulate_get(URL, query_string=query)


def test_pages_follow_the_cursor_to_the_end(client, events) -> None:  # type: ignore[no-untyped-def]
    seen: list[str] = []
    query = "user_id=u0&limit=3"
    r = get(client, query)
    while True:
        assert r.status_code == 200, r.text
        body = r.json
        seen += [item["event_id"] for item in body["items"]]
        assert body["count"] == len(body["items"]) and body["limit"] == 3
        if body["next_cursor"] is None:
            break
        r = get(client, f"{query}&cursor={body['next_cursor']}")
    expected = [str(e.event_id) for e in events if e.user_id == "u0"]
    assert seen == expected  # already in timestamp order by construction
    assert len(expected) == 10 and body["count"] == 1  # 10 = 3+3+3+1: no empty last page


def test_items_carry_computed_fields_and_exact_money(client, events) -> None:  # type: ignore[no-untyped-def]
    r = get(client, "event_type=purchase&limit=1&start=2026-03-01T00:00:00Z")
    (item,) = r.json["items"]
    assert item["event_day"] == "2026-03-01" and item["event_hour"] == 0
    assert item["total_value"] == "9.99" and item["received_at"].startswith("2026-03-01T00:00")
    assert r.json["next_cursor"] is not None


def test_time_range_and_offsets(client, events) -> None:  # type: ignore[no-untyped-def]
    r = get(client, "start=2026-03-01T01:00:10%2B01:00&end=2026-03-01T00:00:20Z&limit=1000")
    assert r.status_code == 200
    assert [i["event_id"] for i in r.json["items"]] == [str(e.event_id) for e in events[10:20]]


def test_a_cursor_for_another_query_or_altered_is_400(client, events) -> None:  # type: ignore[no-untyped-def]
    cursor = get(client, "user_id=u0&limit=2").json["next_cursor"]
    for query in (f"user_id=u1&limit=2&cursor={cursor}",
                  f"user_id=u0&event_type=purchase&cursor={cursor}",
                  f"user_id=u0&cursor={cursor[:-2]}{'A' if cursor[-2] != 'A' else 'B'}{cursor[-1]}"):  # fmt: skip
        r = get(client, query)
        assert r.status_code == 400, query
        assert r.json["parameter"] == "cursor"
        assert r.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("start=not-a-date", "start"),
        ("end=2026-13-01T00:00:00Z", "end"),
        ("start=2026-03-02T00:00:00Z&end=2026-03-01T00:00:00Z", "end"),
        ("limit=1001", "limit"),
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("sort=desc", "sort"),
        ("user_id=a&user_id=b", "user_id"),
        ("user_id=", "user_id"),
        ("cursor=%00%ff", "cursor"),
        # Valid RFC 3339, but outside what UTC can hold once converted: a 400, not a 500.
        ("start=0001-01-01T00:00:00%2B01:00", "start"),
        ("end=9999-12-31T23:59:59-01:00", "end"),
    ],
)
def test_bad_input_is_400_naming_the_parameter(client, query: str, parameter: str) -> None:  # type: ignore[no-untyped-def]
    r = get(client, query)
    assert r.status_code == 400, r.text
    assert r.json["parameter"] == parameter and parameter in r.json["detail"]


def test_cursor_secret_is_kept_in_the_data_dir_and_shared(data_dir: Path, events) -> None:  # type: ignore[no-untyped-def]
    # Two processes of one data dir (here: two containers) accept each other's cursors.
    a = bootstrap(Settings(broker="stub", storage="sqlite", data_dir=data_dir, auth="disabled"))
    b = bootstrap(Settings(broker="stub", storage="sqlite", data_dir=data_dir, auth="disabled"))
    assert a.cursor_secret == b.cursor_secret and len(a.cursor_secret) >= 32
    assert (data_dir / "cursor_secret").stat().st_mode & 0o077 == 0
    cursor = get(falcon.testing.TestClient(create_app(a)), "limit=5").json["next_cursor"]
    r = get(falcon.testing.TestClient(create_app(b)), f"limit=5&cursor={cursor}")
    assert r.status_code == 200 and r.json["count"] == 5
    other = bootstrap(
        Settings(broker="stub", storage="sqlite", data_dir=data_dir, cursor_secret="x" * 32,
                 auth="disabled")
    )
    r = get(falcon.testing.TestClient(create_app(other)), f"limit=5&cursor={cursor}")
    assert r.status_code == 400


def test_one_event_by_its_id(client, events) -> None:  # type: ignore[no-untyped-def]
    """After a 503 (its events may have reached Redis) or for a support question, a client
    had no way to ask whether one event was stored: search filters no event_id (QA)."""
    purchase = events[0]
    r = client.simulate_get(f"/api/v1/analytics/events/{purchase.event_id}")
    assert r.status_code == 200, r.text
    found = client.simulate_get(URL, query_string="event_type=purchase&limit=1").json["items"][0]
    assert r.json == found  # the same shape as a search item
    assert r.headers["Cache-Control"] == "private, no-store"  # a user's data
    upper = client.simulate_get(f"/api/v1/analytics/events/{purchase.event_id.hex.upper()}")
    assert upper.status_code == 200  # any form of the UUID
    missing = client.simulate_get("/api/v1/analytics/events/00000000-0000-4000-8000-000000000000")
    assert missing.status_code == 404 and "not stored yet" in missing.json["detail"]
    bad = client.simulate_get("/api/v1/analytics/events/not-a-uuid")
    assert (bad.status_code, bad.json["parameter"]) == (400, "event_id")
    odd = client.simulate_get(f"/api/v1/analytics/events/{purchase.event_id}", query_string="x=1")
    assert (odd.status_code, odd.json["parameter"]) == (400, "x")
    assert client.simulate_head(f"/api/v1/analytics/events/{purchase.event_id}").status_code == 200
    # The literal routes beside it stay theirs.
    assert client.simulate_get(URL, query_string="limit=1").status_code == 200
    assert client.simulate_get("/api/v1/analytics/events/batch").status_code == 405
