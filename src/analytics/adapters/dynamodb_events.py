"""DynamoDB event repository: idempotent batch writes, TTL-aware reads, index queries.

Idempotency, honestly: ``BatchWriteItem`` has no conditions, so a put overwrites an item
with the same ``event_id``. For raw events that is harmless (the item is the same event).
What must not happen twice is *counting* it: ``add_many`` reports as new only ids that a
consistent ``BatchGetItem`` did not find, and the aggregate store keeps its own per-event
markers (a conditional put inside the same transaction as the ``ADD``), so a race between
two deliveries of one event can at worst notify twice, never count twice.

Round trips per ``add_many`` of n events: ceil(n/100) ``BatchGetItem`` + ceil(new/25)
``BatchWriteItem``, plus retries of unprocessed items (capped exponential backoff, full
jitter). See README, "DynamoDB table design".
"""

from __future__ import annotations

import heapq
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from analytics.adapters import codec
from analytics.adapters.aws import ResourceMissing, error_code
from analytics.adapters.dynamodb_schema import INDEX_BY_NAME, SORT_KEY, TTL_ATTRIBUTE
from analytics.domain.errors import StorageUnavailable
from analytics.domain.events import Event
from analytics.domain.ports import Clock

if TYPE_CHECKING:
    from analytics.domain.search import EventQuery, SearchKey

# Which index serves a search: the most selective filter given (user, session, product,
# type), the time index when there is none; the other filters are checked per item.
INDEX_PREFERENCE = (
    ("user_id", "by_user"),
    ("session_id", "by_session"),
    ("product_id", "by_product"),
    ("event_type", "by_type"),
)
KEY_MIN, KEY_MAX = "0", "~"  # below / above every ts_key ("0" is a prefix of all of them)

BATCH_WRITE_MAX = 25  # DynamoDB's limit per BatchWriteItem
BATCH_GET_MAX = 100  # DynamoDB's limit per BatchGetItem
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def to_us(dt: datetime) -> int:
    return (dt - _EPOCH) // _US


def ts_key(ts_us: int, event_id: uuid.UUID | str) -> str:
    """The sort key of every index: timestamp, then event_id; string order = time order."""
    return f"{ts_us:017d}#{event_id}"


def shard_of(event_id: uuid.UUID, shards: int) -> int:
    return event_id.int % shards


def event_item(event: Event, *, shards: int, retention: timedelta) -> dict[str, Any]:
    """The DynamoDB item (low-level attribute values) for one event."""
    eid = str(event.event_id)
    shard = shard_of(event.event_id, shards)
    ts_us = to_us(event.timestamp)
    expires = int((event.timestamp + retention).timestamp())
    item: dict[str, Any] = {
        "event_id": {"S": eid},
        SORT_KEY: {"S": ts_key(ts_us, eid)},
        "g_time": {"S": f"{event.event_day}#{shard}"},
        "g_type": {"S": f"{event.event_type}#{event.event_day}#{shard}"},
        "g_user": {"S": event.user_id},
        "event_type": {"S": event.event_type},
        "user_id": {"S": event.user_id},
        "event_day": {"S": event.event_day},
        "ts_us": {"N": str(ts_us)},
        TTL_ATTRIBUTE: {"N": str(expires)},
        "body": {"B": codec.encode(event)},
    }
    if event.session_id is not None:
        item["g_session"] = {"S": event.session_id}
        item["session_id"] = {"S": event.session_id}
    if event.product_id is not None:
        item["g_product"] = {"S": f"{event.product_id}#{shard}"}
        item["product_id"] = {"S": event.product_id}
    return item


def _day_of_key(key: str) -> str:
    us = int(key[:17])
    return (_EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%d")


def item_event(item: dict[str, Any]) -> Event:
    body = item["body"]["B"]
    return codec.decode_event(bytes(body))


def item_expired(item: dict[str, Any], now_epoch: int) -> bool:
    exp = item.get(TTL_ATTRIBUTE)
    return exp is not None and int(exp["N"]) <= now_epoch


class Backoff:
    """Capped exponential backoff with full jitter: sleep U(0, min(cap, base * 2**n))."""

    def __init__(
        self,
        *,
        base_s: float = 0.05,
        cap_s: float = 2.0,
        max_attempts: int = 8,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.base_s, self.cap_s, self.max_attempts = base_s, cap_s, max_attempts
        self.sleep = sleep
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not crypto

    def delay(self, attempt: int) -> float:
        return self.rng.uniform(0, min(self.cap_s, self.base_s * (2**attempt)))


class DynamoDBEventRepository:
    """EventRepository port on one DynamoDB table (design: ``dynamodb_schema``)."""

    def __init__(
        self,
        client: Any,
        table: str,
        *,
        clock: Clock,
        directory_table: str | None = None,
        shards: int = 8,
        retention_days: int = 395,
        backoff: Backoff | None = None,
        directory_refresh_s: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.table = table
        self.directory_table = directory_table
        self._marked: set[tuple[str, str]] = set()  # directory entries written: _mark_days
        self._marked_lock = threading.Lock()
        self.directory_refresh_s = directory_refresh_s
        self._monotonic = monotonic
        self._verified_at = monotonic()  # when the cached entries were last read back
        self.clock = clock
        self.shards = shards
        self.retention = timedelta(days=retention_days)
        self.backoff = backoff or Backoff()

    # --- writes ----------------------------------------------------------------------
    def add_many(self, events: Sequence[Event]) -> list[uuid.UUID]:
        unique: dict[uuid.UUID, Event] = {}
        for e in events:
            unique.setdefault(e.event_id, e)  # a duplicate key in one batch is an error
        if not unique:
            return []
        present = self._present_ids(list(unique))
        new = [e for i, e in unique.items() if i not in present]
        self._mark_days(new)  # before the events: a search never misses a stored event
        self.write_items([event_item(e, shards=self.shards, retention=self.retention) for e in new])
        return [e.event_id for e in new]

    def write_items(self, items: Sequence[dict[str, Any]]) -> int:
        """Put items in chunks of 25; retry UnprocessedItems. Returns BatchWriteItem calls."""
        calls = 0
        for start in range(0, len(items), BATCH_WRITE_MAX):
            pending: dict[str, Any] = {
                self.table: [{"PutRequest": {"Item": it}} for it in items[start : start + 25]]
            }
            attempt = 0
            while pending:
                response = self._call("batch_write_item", RequestItems=pending)
                calls += 1
                pending = response.get("UnprocessedItems") or {}
                if pending:
                    attempt += 1
                    if attempt >= self.backoff.max_attempts:
                        left = sum(len(v) for v in pending.values())
                        raise StorageUnavailable(
                            f"dynamodb: {left} items still unprocessed after {attempt} tries"
                        )
                    self.backoff.sleep(self.backoff.delay(attempt))
        return calls

    def _mark_days(self, events: Sequence[Event]) -> None:
        """Record which days (and type-days) hold events: the day directory.

        The time and type indexes are partitioned by day, so an open-ended search must know
        which days exist instead of querying every day of the retention window. Entries
        are idempotent puts, cached per process, so the directory partition sees a few
        writes a day, however many events arrive.

        The cache must not outlive the table it describes: a table deleted and created
        again (or restored from a backup) under a running worker has lost entries the
        cache still holds, and a search by time or type (and reconcile's reads) would skip
        the events of those days. So once every ``directory_refresh_s`` a write first reads
        back every cached entry (consistent ``BatchGetItem``, 100 keys a call) and puts
        again the ones that are gone, and a call that finds a table missing drops the
        cache. Events written between a quiet re-creation and the next check are covered
        by it: their days are cached, so they are among the entries it restores. After
        each check only the entries of yesterday and later stay cached."""
        if self.directory_table is None:
            return
        gone: list[tuple[str, str]] = []
        now = self._monotonic()
        if now - self._verified_at >= self.directory_refresh_s:
            self._verified_at = now
            with self._marked_lock:
                cached = sorted(self._marked)
            gone = self._missing_entries(cached) if cached else []
            # Checked, the entries of older days leave the cache (a late event of one is
            # rare, and puts its entry again): the check reads a few days' entries, not
            # every day a process ever wrote.
            recent = (self.clock.now() - timedelta(days=1)).date().isoformat()
            with self._marked_lock:
                self._marked = {k for k in self._marked if k[1] >= recent}
        wanted = {("DIR#days", e.event_day) for e in events}
        wanted |= {(f"DIR#type#{e.event_type}", e.event_day) for e in events}
        with self._marked_lock:
            missing = sorted((wanted - self._marked) | set(gone))
        for pk, day in missing:
            expires = int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp())
            expires += int((self.retention + timedelta(days=2)).total_seconds())
            self._call(
                "put_item",
                TableName=self.directory_table,
                Item={"pk": {"S": pk}, "sk": {"S": day}, TTL_ATTRIBUTE: {"N": str(expires)}},
            )
            with self._marked_lock:
                self._marked.add((pk, day))

    def _missing_entries(self, keys: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """Of these directory entries, those the directory table does not hold."""
        assert self.directory_table is not None  # noqa: S101 - _mark_days checked it
        items = self._batch_get_keys(
            self.directory_table, [{"pk": {"S": pk}, "sk": {"S": day}} for pk, day in keys], "pk, sk"
        )
        found = {(it["pk"]["S"], it["sk"]["S"]) for it in items}
        return [k for k in keys if k not in found]

    def _days(self, pk: str, lo_day: str | None, hi_day: str | None) -> list[str]:
        """Days in the directory between lo_day and hi_day (inclusive), ascending."""
        if self.directory_table is None:
            raise StorageUnavailable("dynamodb: no day directory configured for time queries")
        values: dict[str, Any] = {":pk": {"S": pk}}
        condition = "pk = :pk"
        if lo_day or hi_day:
            values[":lo"] = {"S": lo_day or "0000-00-00"}
            values[":hi"] = {"S": hi_day or "9999-99-99"}
            condition += " AND sk BETWEEN :lo AND :hi"
        request: dict[str, Any] = {
            "TableName": self.directory_table,
            "KeyConditionExpression": condition,
            "ExpressionAttributeValues": values,
            "ConsistentRead": True,
        }
        days: list[str] = []
        while True:
            response = self._call("query", **request)
            days += [it["sk"]["S"] for it in response.get("Items", [])]
            last = response.get("LastEvaluatedKey")
            if not last:
                return days
            request["ExclusiveStartKey"] = last

    # --- search (EventRepository.search) ------------------------------------------------
    def search(self, query: EventQuery, *, after: SearchKey | None, limit: int) -> list[Event]:
        """Ascending (timestamp, event_id), strictly after ``after``; Query only, never Scan.

        The keyset position is the index sort key itself (``ts_key``, what a
        LastEvaluatedKey holds), so resuming is a key condition ``ts_key > position``
        that works across shards, where a single ExclusiveStartKey could not.
        """
        return list(self.iter_query(query, after=after, limit=limit))

    def iter_query(
        self, query: EventQuery, *, after: SearchKey | None = None, limit: int | None = None
    ) -> Iterator[Event]:
        lo = KEY_MIN
        if query.start is not None:
            lo = f"{to_us(query.start):017d}#"
        if after is not None:
            lo = max(lo, ts_key(to_us(after.timestamp), after.event_id))
        hi = KEY_MAX if query.end is None else f"{to_us(query.end):017d}#"
        if lo >= hi:
            return
        given = {
            attr: getattr(query, attr)
            for attr, _ in INDEX_PREFERENCE
            if getattr(query, attr) is not None
        }
        page = max(10, min(limit or 500, 1000))
        for n, item in enumerate(self._items(given, lo, hi, page), start=1):
            yield item_event(item)
            if limit is not None and n >= limit:
                return

    def iter_range(
        self, start: datetime, end: datetime, *, page_size: int = 1000
    ) -> Iterator[Event]:
        """Events with start <= timestamp < end in (timestamp, event_id) order, from the
        time index a day (and its shards) at a time: the reconcile job's read."""
        lo, hi = f"{to_us(start):017d}#", f"{to_us(end):017d}#"
        if lo >= hi:
            return
        for item in self._items({}, lo, hi, max(10, min(page_size, 1000))):
            yield item_event(item)

    def _items(
        self, given: dict[str, str], lo: str, hi: str, page: int
    ) -> Iterator[dict[str, Any]]:
        for attr, index in INDEX_PREFERENCE:
            if attr in given:
                rest = {k: v for k, v in given.items() if k != attr}
                if index in ("by_user", "by_session"):
                    yield from self.query_partition(
                        index, given[attr], lo=lo, hi=hi, page_limit=page, filters=rest
                    )
                    return
                if index == "by_product":
                    parts = [f"{given[attr]}#{s}" for s in range(self.shards)]
                    yield from self.merged(index, parts, lo=lo, hi=hi, page_limit=page,
                                           filters=rest)  # fmt: skip
                    return
                # by_type: day-partitioned like the time index
                yield from self._by_day(
                    "by_type", f"DIR#type#{given[attr]}", f"{given[attr]}#", lo, hi, page, rest
                )
                return
        yield from self._by_day("by_time", "DIR#days", "", lo, hi, page, {})

    def _by_day(
        self, index: str, directory_pk: str, prefix: str, lo: str, hi: str, page: int,
        filters: dict[str, str],
    ) -> Iterator[dict[str, Any]]:  # fmt: skip
        lo_day = _day_of_key(lo) if lo != KEY_MIN else None
        hi_day = _day_of_key(hi) if hi != KEY_MAX else None
        for day in self._days(directory_pk, lo_day, hi_day):
            parts = [f"{prefix}{day}#{s}" for s in range(self.shards)]
            yield from self.merged(index, parts, lo=lo, hi=hi, page_limit=page, filters=filters)

    # --- reads -----------------------------------------------------------------------
    def _batch_get(
        self, event_ids: Sequence[str], projection: str | None
    ) -> Iterator[dict[str, Any]]:
        keys = [{"event_id": {"S": i}} for i in event_ids]
        return self._batch_get_keys(self.table, keys, projection)

    def _batch_get_keys(
        self, table: str, keys: Sequence[dict[str, Any]], projection: str | None
    ) -> Iterator[dict[str, Any]]:
        """Consistent ``BatchGetItem`` of ``keys`` in calls of 100, unprocessed keys retried."""
        for start in range(0, len(keys), BATCH_GET_MAX):
            request: dict[str, Any] = {
                "Keys": list(keys[start : start + BATCH_GET_MAX]), "ConsistentRead": True,
            }  # fmt: skip
            if projection:
                request["ProjectionExpression"] = projection
            pending: dict[str, Any] = {table: request}
            attempt = 0
            while pending:
                response = self._call("batch_get_item", RequestItems=pending)
                yield from response.get("Responses", {}).get(table, [])
                pending = response.get("UnprocessedKeys") or {}
                if pending:
                    attempt += 1
                    if attempt >= self.backoff.max_attempts:
                        raise StorageUnavailable("dynamodb: keys still unprocessed after retries")
                    self.backoff.sleep(self.backoff.delay(attempt))

    def _now_epoch(self) -> int:
        return int(self.clock.now().timestamp())

    def _present_ids(self, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        now = self._now_epoch()
        items = self._batch_get([str(i) for i in ids], f"event_id, {TTL_ATTRIBUTE}")
        return {uuid.UUID(it["event_id"]["S"]) for it in items if not item_expired(it, now)}

    def get_many(self, event_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Event]:
        ids = list(dict.fromkeys(str(i) for i in event_ids))
        now = self._now_epoch()
        out: dict[uuid.UUID, Event] = {}
        for item in self._batch_get(ids, None):
            if not item_expired(item, now):
                e = item_event(item)
                out[e.event_id] = e
        return out

    def purge_before(self, cutoff: datetime) -> int:
        """Retention on DynamoDB is the table's TTL (``expires_at`` = timestamp + retention
        days, the same ``ANALYTICS_RETENTION_DAYS`` the retention job uses), and reads drop
        expired items at once: nothing to delete here, so no write capacity is spent."""
        return 0

    def count(self) -> int:
        """Approximate (DynamoDB refreshes ItemCount about every six hours); never a Scan."""
        desc = self._call("describe_table", TableName=self.table)
        return int(desc["Table"].get("ItemCount", 0))

    # --- index queries (search, time-range iteration) ---------------------------------
    def partitions(
        self, index: str, value: str | None, start: datetime, end: datetime
    ) -> list[str]:
        """The index partition keys that can hold events of [start, end) for ``value``."""
        if index in ("by_user", "by_session"):
            assert value is not None
            return [value]
        if index == "by_product":
            assert value is not None
            return [f"{value}#{s}" for s in range(self.shards)]
        out: list[str] = []
        day = start.astimezone(UTC).date()
        last = (end - _US).astimezone(UTC).date()
        while day <= last:
            prefix = f"{value}#{day.isoformat()}" if index == "by_type" else day.isoformat()
            out.extend(f"{prefix}#{s}" for s in range(self.shards))
            day += timedelta(days=1)
        return out

    def query_partition(
        self,
        index: str,
        partition: str,
        *,
        lo: str,
        hi: str,
        descending: bool = False,
        page_limit: int = 200,
        filters: dict[str, str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Items of one index partition with lo < ts_key < hi, in order, expired dropped.

        Follows LastEvaluatedKey until it is absent: ``Limit`` applies before the filter,
        so an empty page does not mean the end.
        """
        idx = INDEX_BY_NAME[index]
        names = {"#p": idx.partition, "#k": SORT_KEY}
        values: dict[str, Any] = {":p": {"S": partition}, ":lo": {"S": lo}, ":hi": {"S": hi}}
        request: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": index,
            "KeyConditionExpression": "#p = :p AND #k BETWEEN :lo AND :hi",
            "ScanIndexForward": not descending,
            "Limit": page_limit,
        }
        clauses = []
        for n, (attr, val) in enumerate(sorted((filters or {}).items())):
            names[f"#f{n}"] = attr
            values[f":f{n}"] = {"S": val}
            clauses.append(f"#f{n} = :f{n}")
        now = self._now_epoch()
        names["#x"] = TTL_ATTRIBUTE
        values[":now"] = {"N": str(now)}
        clauses.append("#x > :now")
        request["FilterExpression"] = " AND ".join(clauses)
        request["ExpressionAttributeNames"] = names
        request["ExpressionAttributeValues"] = values
        while True:
            response = self._call("query", **request)
            for item in response.get("Items", []):
                # lo/hi are inclusive in BETWEEN; the bounds we pass are exclusive.
                key = item[SORT_KEY]["S"]
                if lo < key < hi:
                    yield item
            last = response.get("LastEvaluatedKey")
            if not last:
                return
            request["ExclusiveStartKey"] = last

    def merged(
        self,
        index: str,
        partitions: Sequence[str],
        *,
        lo: str,
        hi: str,
        descending: bool = False,
        page_limit: int = 200,
        filters: dict[str, str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """k-way merge of several partitions' ordered streams, in (timestamp, event_id) order."""
        streams = [
            self.query_partition(
                index, p, lo=lo, hi=hi, descending=descending, page_limit=page_limit,
                filters=filters,
            )
            for p in partitions
        ]  # fmt: skip
        if len(streams) == 1:
            yield from streams[0]
            return
        yield from heapq.merge(*streams, key=lambda it: it[SORT_KEY]["S"], reverse=descending)

    # --- plumbing --------------------------------------------------------------------
    def _table_of(self, kwargs: dict[str, Any]) -> str:
        """The table a call named (a batch call: its first), for the error message."""
        return str(
            kwargs.get("TableName") or next(iter(kwargs.get("RequestItems") or {}), self.table)
        )

    def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, operation)(**kwargs)
        except Exception as exc:
            code = error_code(exc)
            if code == "ResourceNotFoundException":
                with self._marked_lock:
                    self._marked.clear()  # the directory came back empty, or will
                raise ResourceMissing("DynamoDB table", self._table_of(kwargs)) from exc
            if code in ("ValidationException", "SerializationException"):
                raise
            raise StorageUnavailable(f"dynamodb {operation}: {code or exc}") from exc
