"""DynamoDB event repository and ``analytics init`` against a moto server over HTTP."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest

from analytics.adapters.aws import ResourceMissing, dynamodb_client, sns_client
from analytics.adapters.dynamodb_events import Backoff, DynamoDBEventRepository
from analytics.adapters.dynamodb_schema import check_resources, ensure_resources
from analytics.domain.clock import FixedClock
from analytics.settings import Settings
from tests.aws_support import CallCounter, aws_settings, make_event

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(moto_server: Any, aws_names: dict[str, str]) -> Any:
    return aws_settings(moto_server, aws_names)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(make_event(0).timestamp + timedelta(minutes=5))


@pytest.fixture
def repo(settings: Any, clock: FixedClock) -> DynamoDBEventRepository:
    ensure_resources(settings)
    return DynamoDBEventRepository(
        dynamodb_client(settings), settings.events_table, clock=clock,
        directory_table=settings.aggregates_table, shards=settings.dynamodb_shards, retention_days=settings.retention_days,
        backoff=Backoff(sleep=lambda s: None),
    )  # fmt: skip


def test_init_creates_tables_indexes_ttl_and_topic_then_does_nothing(settings: Any) -> None:
    with pytest.raises(ResourceMissing, match=settings.events_table) as info:
        check_resources(settings)
    assert "analytics init" in str(info.value)

    done = ensure_resources(settings)
    assert f"created table {settings.events_table}" in done
    assert f"created table {settings.aggregates_table}" in done
    assert f"created topic {settings.sns_topic_arn}" in done
    check_resources(settings)  # nothing missing any more

    ddb = dynamodb_client(settings)
    table = ddb.describe_table(TableName=settings.events_table)["Table"]
    assert {g["IndexName"] for g in table["GlobalSecondaryIndexes"]} == {
        "by_time", "by_type", "by_user", "by_session", "by_product",
    }  # fmt: skip
    ttl = ddb.describe_time_to_live(TableName=settings.events_table)["TimeToLiveDescription"]
    assert ttl["TimeToLiveStatus"] == "ENABLED" and ttl["AttributeName"] == "expires_at"
    sns_client(settings).get_topic_attributes(TopicArn=settings.sns_topic_arn)

    assert ensure_resources(settings) == []  # second run: a no-op


def test_missing_topic_is_named(settings: Any) -> None:
    ensure_resources(settings)
    sns_client(settings).delete_topic(TopicArn=settings.sns_topic_arn)
    with pytest.raises(ResourceMissing, match="SNS topic") as info:
        check_resources(settings)
    assert settings.sns_topic_arn in str(info.value)


def test_same_event_id_is_stored_once(repo: DynamoDBEventRepository) -> None:
    events = [make_event(n) for n in range(30)]
    assert repo.add_many(events) == [e.event_id for e in events]
    more = [make_event(100 + n) for n in range(5)]
    again = events[:10] + more + events[10:] + [more[0]]
    assert repo.add_many(again) == [e.event_id for e in more]
    got = repo.get_many([e.event_id for e in events + more])
    assert got == {e.event_id: e for e in events + more}  # exact round trip
    assert repo.count() == 35


def test_money_and_metadata_survive_exactly(repo: DynamoDBEventRepository) -> None:
    e = make_event(1, event_type="purchase", product_id="sku-1", price="19.990001",
                   currency="EUR")  # fmt: skip
    repo.add_many([e])
    back = repo.get_many([e.event_id])[e.event_id]
    assert str(back.total_value) == "19.990001" and back == e


def test_items_past_their_ttl_are_not_read(
    repo: DynamoDBEventRepository, clock: FixedClock, settings: Any
) -> None:
    e = make_event(0)
    repo.add_many([e])
    assert e.event_id in repo.get_many([e.event_id])
    # moto never deletes expired items (nor does DynamoDB promptly): reads must drop them.
    clock.advance(timedelta(days=settings.retention_days))
    assert repo.get_many([e.event_id]) == {}
    assert list(repo.query_partition("by_user", e.user_id, lo="0", hi="9")) == []
    assert repo.add_many([e]) == [e.event_id]  # an expired copy is not "already stored"


def test_ten_thousand_events_take_ceil_n_over_25_batch_writes(
    repo: DynamoDBEventRepository,
) -> None:
    counter = CallCounter(repo.client)
    events = [make_event(n) for n in range(10_000)]
    assert len(repo.add_many(events)) == 10_000
    # moto never returns UnprocessedItems, so no retries here: exactly the bound.
    assert counter.calls["BatchWriteItem"] == math.ceil(10_000 / 25) == 400
    assert counter.calls["BatchGetItem"] == math.ceil(10_000 / 100)
    assert counter.calls["Scan"] == 0
    assert counter.calls["PutItem"] == 2  # the day directory: one day, one event type


def _recreate_tables(settings: Any) -> None:
    """What an operator's restore looks like to a running worker: same names, new tables."""
    ddb = dynamodb_client(settings)
    for name in (settings.events_table, settings.aggregates_table):
        ddb.delete_table(TableName=name)
    ensure_resources(settings)


def _searched(repo: DynamoDBEventRepository, **filters: Any) -> set[Any]:
    from analytics.domain.search import EventQuery  # noqa: PLC0415

    return {e.event_id for e in repo.search(EventQuery(**filters), after=None, limit=100)}


def _repo_with_clock(settings: Any, clock: FixedClock, now: list[float]) -> DynamoDBEventRepository:
    return DynamoDBEventRepository(
        dynamodb_client(settings), settings.events_table, clock=clock,
        directory_table=settings.aggregates_table, shards=settings.dynamodb_shards,
        backoff=Backoff(sleep=lambda s: None), directory_refresh_s=60, monotonic=lambda: now[0],
    )  # fmt: skip


@pytest.mark.parametrize("write_between", [True, False], ids=["write-meets-gap", "quiet-gap"])
def test_day_directory_is_written_again_after_the_tables_came_back(
    settings: Any, clock: FixedClock, write_between: bool
) -> None:
    """QA (twice): tables deleted and created again under a running worker; the worker's
    cache said the day's directory entries were written, so searches by time or type
    (and reconcile's reads) skipped every event of those days written afterwards."""
    ensure_resources(settings)
    now = [0.0]
    repo = _repo_with_clock(settings, clock, now)
    day_before = make_event(0).timestamp - timedelta(days=1)
    repo.add_many([make_event(0), make_event(1, at=day_before)])
    if write_between:
        ddb = dynamodb_client(settings)
        ddb.delete_table(TableName=settings.events_table)
        with pytest.raises(ResourceMissing, match=settings.events_table):
            repo.add_many([make_event(2)])  # the worker meets the gap: the message retries
        ddb.delete_table(TableName=settings.aggregates_table)
        ensure_resources(settings)
    else:
        _recreate_tables(settings)  # nobody writes while the tables are gone
    # Right after: the same days, still cached as written.
    later = make_event(3, event_type="click")
    backfill = make_event(4, event_type="signup", at=day_before + timedelta(minutes=5))
    repo.add_many([later, backfill])
    now[0] += 61  # the next write a minute on, of another day, checks the cache
    other = make_event(5, at=make_event(0).timestamp + timedelta(days=1))
    repo.add_many([other])
    assert _searched(repo) == {later.event_id, backfill.event_id, other.event_id}  # by time
    assert _searched(repo, event_type="click") == {later.event_id}  # the type index
    assert _searched(repo, event_type="signup") == {backfill.event_id}
    assert _searched(repo, user_id=later.user_id) >= {later.event_id}


def test_day_directory_costs_a_check_a_minute_and_no_puts_while_intact(
    settings: Any, clock: FixedClock
) -> None:
    ensure_resources(settings)
    now = [0.0]
    repo = _repo_with_clock(settings, clock, now)
    counter = CallCounter(repo.client)
    repo.add_many([make_event(0)])
    repo.add_many([make_event(1)])
    assert counter.calls["PutItem"] == 2  # one day, one type: cached for the second batch
    gets = counter.calls["BatchGetItem"]
    now[0] += 61
    repo.add_many([make_event(2)])
    assert counter.calls["PutItem"] == 2  # the check found both entries
    assert counter.calls["BatchGetItem"] == gets + 2  # the check, and "is it new?"


def test_a_missing_directory_table_is_named(settings: Any, repo: DynamoDBEventRepository) -> None:
    dynamodb_client(settings).delete_table(TableName=settings.aggregates_table)
    with pytest.raises(ResourceMissing, match=settings.aggregates_table):
        repo.add_many([make_event(0)])


def test_init_with_a_topic_of_another_region_is_refused_before_creating_anything(
    moto_server: Any, aws_names: dict[str, str]
) -> None:
    import subprocess  # noqa: PLC0415

    from tests.support import analytics_cmd, child_env  # noqa: PLC0415

    env = child_env(**{**moto_server.env(), **aws_names, "ANALYTICS_STORAGE": "dynamodb",
                       "ANALYTICS_AWS_REGION": "eu-west-1"})  # the topic ARN: us-east-1  # fmt: skip
    done = subprocess.run(analytics_cmd("init"), env=env, capture_output=True, timeout=60,
                          check=False)  # fmt: skip
    assert done.returncode == 2, done
    assert "ANALYTICS_SNS_TOPIC_ARN is in region us-east-1" in done.stderr.decode()
    settings = Settings.from_env({**moto_server.env(), **aws_names})
    for region in ("eu-west-1", "us-east-1"):
        ddb = dynamodb_client(settings.model_copy(update={"aws_region": region}))
        assert settings.events_table not in ddb.list_tables()["TableNames"]


def test_the_check_keeps_only_recent_days_cached(settings: Any, clock: FixedClock) -> None:
    ensure_resources(settings)
    now = [0.0]
    repo = _repo_with_clock(settings, clock, now)
    today = make_event(0).timestamp
    repo.add_many([make_event(n, at=today - timedelta(days=n)) for n in range(5)])
    assert len(repo._marked) == 10  # noqa: SLF001 - five days, one type each
    now[0] += 61
    repo.add_many([make_event(9)])
    assert {day for _, day in repo._marked} == {  # noqa: SLF001
        today.date().isoformat(), (today - timedelta(days=1)).date().isoformat()}  # fmt: skip
    counter = CallCounter(repo.client)
    late = make_event(10, at=today - timedelta(days=3, minutes=1))
    repo.add_many([late])  # an old day again: its entries are put again (idempotent)
    assert counter.calls["PutItem"] == 2
    assert late.event_id in _searched(repo)
