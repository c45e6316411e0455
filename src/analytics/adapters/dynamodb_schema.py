"""DynamoDB table design (README, "DynamoDB table design"): keys, indexes, TTL, and init.

Events table, one item per event:

- table key ``event_id`` (S): idempotency is a property of the key itself.
- ``ts_key`` (S) = ``<microseconds since epoch, 17 digits>#<event_id>``: the sort key of
  every index, so index order *is* the search order (timestamp, event_id) and a keyset
  cursor is one string.
- sparse GSIs, one per search filter, their partition keys sharded where one value could
  take a large share of the traffic (``shard = event_id.int % dynamodb_shards``):

  ========== ================================= =================================
  index      partition key                     serves
  ========== ================================= =================================
  by_time    ``g_time``  = day#shard           time range only
  by_type    ``g_type``  = type#day#shard      event type (+ time range)
  by_user    ``g_user``  = user_id             user (+ anything as a filter)
  by_session ``g_session`` = session_id        session
  by_product ``g_product`` = product_id#shard  product
  ========== ================================= =================================

- ``expires_at`` (N, epoch seconds): the TTL attribute (timestamp + retention). TTL deletes
  lazily, so reads drop expired items themselves.

Aggregates table: generic ``pk``/``sk`` (S) keys, ``expires_at`` TTL for the day directory
entries; counters and applied markers never expire (markers must outlive every redelivery).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from analytics.adapters.aws import ResourceMissing, error_code

if TYPE_CHECKING:
    from analytics.settings import Settings

TTL_ATTRIBUTE = "expires_at"
SORT_KEY = "ts_key"


@dataclass(frozen=True, slots=True)
class Index:
    name: str
    partition: str  # attribute name


EVENT_INDEXES: tuple[Index, ...] = (
    Index("by_time", "g_time"),
    Index("by_type", "g_type"),
    Index("by_user", "g_user"),
    Index("by_session", "g_session"),
    Index("by_product", "g_product"),
)
INDEX_BY_NAME = {i.name: i for i in EVENT_INDEXES}


def events_table_spec(name: str) -> dict[str, Any]:
    attrs = [("event_id", "S"), (SORT_KEY, "S")] + [(i.partition, "S") for i in EVENT_INDEXES]
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [{"AttributeName": a, "AttributeType": t} for a, t in attrs],
        "KeySchema": [{"AttributeName": "event_id", "KeyType": "HASH"}],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": i.name,
                "KeySchema": [
                    {"AttributeName": i.partition, "KeyType": "HASH"},
                    {"AttributeName": SORT_KEY, "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
            for i in EVENT_INDEXES
        ],
    }


def aggregates_table_spec(name: str) -> dict[str, Any]:
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
    }


def _describe(client: Any, table: str) -> dict[str, Any] | None:
    try:
        return dict(client.describe_table(TableName=table)["Table"])
    except client.exceptions.ResourceNotFoundException:
        return None


def ensure_table(client: Any, spec: dict[str, Any], *, wait_s: float = 120.0) -> list[str]:
    """Create the table, its missing indexes and its TTL; return what was done (may be [])."""
    done: list[str] = []
    name = spec["TableName"]
    desc = _describe(client, name)
    if desc is None:
        client.create_table(**spec)
        done.append(f"created table {name}")
        client.get_waiter("table_exists").wait(
            TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": int(wait_s)}
        )
        desc = _describe(client, name) or {}
    have = {g["IndexName"] for g in desc.get("GlobalSecondaryIndexes", [])}
    for gsi in spec.get("GlobalSecondaryIndexes", []):
        if gsi["IndexName"] in have:
            continue
        # One index per UpdateTable call (a DynamoDB rule); wait until it is ACTIVE.
        client.update_table(
            TableName=name,
            AttributeDefinitions=spec["AttributeDefinitions"],
            GlobalSecondaryIndexUpdates=[{"Create": gsi}],
        )
        done.append(f"created index {name}.{gsi['IndexName']}")
        _wait_index_active(client, name, gsi["IndexName"], wait_s)
    ttl = client.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
        client.update_time_to_live(
            TableName=name,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
        )
        done.append(f"enabled TTL on {name}.{TTL_ATTRIBUTE}")
    return done


def _wait_index_active(client: Any, table: str, index: str, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        desc = _describe(client, table) or {}
        for g in desc.get("GlobalSecondaryIndexes", []):
            if g["IndexName"] == index and g.get("IndexStatus", "ACTIVE") == "ACTIVE":
                return
        time.sleep(1.0)
    raise TimeoutError(f"index {table}.{index} not ACTIVE after {wait_s}s")


def check_table(client: Any, spec: dict[str, Any]) -> None:
    """Raise ResourceMissing naming the table or index that ``analytics init`` would create."""
    name = spec["TableName"]
    desc = _describe(client, name)
    if desc is None:
        raise ResourceMissing("DynamoDB table", name)
    have = {g["IndexName"] for g in desc.get("GlobalSecondaryIndexes", [])}
    for gsi in spec.get("GlobalSecondaryIndexes", []):
        if gsi["IndexName"] not in have:
            raise ResourceMissing("DynamoDB index", f"{name}.{gsi['IndexName']}")


def ensure_topic(client: Any, arn: str) -> list[str]:
    """Create the SNS topic named by ``arn`` when missing (CreateTopic is idempotent)."""
    if _topic_exists(client, arn):
        return []
    created = client.create_topic(Name=arn.rsplit(":", 1)[1])["TopicArn"]
    if created != arn:
        raise ResourceMissing(
            "SNS topic", f"{arn} (CreateTopic made {created}: check region/account)"
        )
    return [f"created topic {arn}"]


def check_topic(client: Any, arn: str) -> None:
    if not _topic_exists(client, arn):
        raise ResourceMissing("SNS topic", arn)


def _topic_exists(client: Any, arn: str) -> bool:
    try:
        client.get_topic_attributes(TopicArn=arn)
    except Exception as exc:
        if error_code(exc) in ("NotFound", "NotFoundException"):
            return False
        raise
    return True


def required_tables(settings: Settings) -> list[dict[str, Any]]:
    if settings.storage != "dynamodb":
        return []
    return [
        events_table_spec(settings.events_table),
        aggregates_table_spec(settings.aggregates_table),
    ]


def ensure_resources(settings: Settings) -> list[str]:
    """``analytics init``: create what is missing (tables, indexes, TTL, topic); idempotent."""
    from analytics.adapters.aws import dynamodb_client, sns_client  # noqa: PLC0415

    done: list[str] = []
    tables = required_tables(settings)
    if tables:
        client = dynamodb_client(settings)
        for spec in tables:
            done += ensure_table(client, spec)
    if settings.sns_topic_arn:
        done += ensure_topic(sns_client(settings), settings.sns_topic_arn)
    return done


def check_resources(settings: Settings) -> None:
    """At start: raise ResourceMissing naming the first missing table, index or topic."""
    from analytics.adapters.aws import dynamodb_client, sns_client  # noqa: PLC0415

    tables = required_tables(settings)
    if tables:
        client = dynamodb_client(settings)
        for spec in tables:
            check_table(client, spec)
    if settings.sns_topic_arn:
        check_topic(sns_client(settings), settings.sns_topic_arn)
