"""DynamoDB aggregate store: exactly-once counters with per-event markers.

Table ``aggregates`` (``pk``/``sk``), items:

- counter ``pk = A#<grain>#<UTC day>#<shard>``, ``sk = <bucket:010d>#<kind>#<type>#<dim>#<dim2>``,
  attribute ``v`` (N) grown with ``ADD``. ``shard = event_id.int % aggregate_shards``: one
  event's counters share a partition; a busy minute's counters spread over all shards, so
  neither a day nor a popular event type is one hot partition. Reads sum a counter over
  its shards, so a counter's value is the same whichever shard an event landed in.
- applied marker ``pk = M#<UTC day>#<shard>``, ``sk = <minute:010d>#<event_id>``: written
  with ``attribute_not_exists(pk)`` in the *same* ``TransactWriteItems`` as the event's
  ``ADD`` s, so a redelivered event fails its condition and adds nothing (the transaction
  is cancelled as a whole; the events whose markers failed are dropped and the rest
  re-sent). ``ClientRequestToken`` alone would dedupe for ten minutes only.
- day directory ``pk = DIR#...`` (see the event repository).

Transactions hold at most 100 items: events are packed greedily (one marker + their merged
counter updates each). Summaries read the base buckets of a window with one ``Query`` per
(grain, day, shard) over a sort-key range, and compute exact unique users/sessions as the
distinct members with a positive summed value, like the other stores.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from analytics.adapters.aws import ResourceMissing, error_code
from analytics.adapters.dynamodb_events import Backoff
from analytics.domain.aggregation import (
    Breakdown,
    Contribution,
    CounterKey,
    Summary,
    breakdown_counters,
    summarize_counters,
)
from analytics.domain.buckets import GRAINS, Piece, from_minute
from analytics.domain.errors import BadQuery, StorageUnavailable
from analytics.domain.ports import AggregateSnapshot

TRANSACT_MAX = 100  # DynamoDB's limit per TransactWriteItems
_SEP = "\x1f"  # unit separator: never inside an identifier, so sort keys split unambiguously


def _day(minute: int) -> str:
    return from_minute(minute).strftime("%Y-%m-%d")


def counter_pk(grain: int, bucket: int, shard: int) -> str:
    return f"A#{grain}#{_day(bucket)}#{shard}"


def counter_sk(k: CounterKey) -> str:
    return _SEP.join((f"{k.bucket:010d}", k.kind, k.event_type, k.dim, k.dim2))


def parse_counter(grain: int, sk: str) -> CounterKey:
    bucket, kind, event_type, dim, dim2 = sk.split(_SEP)
    return CounterKey(kind, grain, int(bucket), event_type, dim, dim2)


def marker_key(c: Contribution, shard: int) -> dict[str, Any]:
    return {
        "pk": {"S": f"M#{_day(c.minute)}#{shard}"},
        "sk": {"S": f"{c.minute:010d}#{c.event_id}"},
    }


class DynamoDBAggregateStore:
    """AggregateStore port on the aggregates table (design in the module docstring)."""

    def __init__(
        self, client: Any, table: str, *, shards: int = 4, backoff: Backoff | None = None,
        read_parallelism: int = 8, max_read_days: int | None = None,
    ) -> None:  # fmt: skip
        self.client = client
        self.table = table
        self.shards = shards
        self.backoff = backoff or Backoff(max_attempts=10)
        self.read_parallelism = read_parallelism
        self.max_read_days = max_read_days

    # --- writes -----------------------------------------------------------------------
    def apply(self, contributions: Sequence[Contribution]) -> list[uuid.UUID]:
        unique: dict[uuid.UUID, Contribution] = {}
        for c in contributions:
            unique.setdefault(c.event_id, c)
        # Markers read first (consistent BatchGetItem): a redelivery then costs one read per
        # 100 events instead of cancelled transactions. The conditional put in the
        # transaction still decides when two deliveries race.
        applied = self._applied(list(unique.values()))
        new: list[uuid.UUID] = []
        group: list[Contribution] = []
        items: set[tuple[int, CounterKey]] = set()  # the counter items the group touches
        for c in unique.values():
            if c.event_id in applied:
                continue
            shard = c.event_id.int % self.shards
            mine = {(shard, k) for k, v in c.deltas.items() if v}
            if group and len(group) + 1 + len(items | mine) > TRANSACT_MAX:
                new += self._apply_group(group)
                group, items = [], set()
            group.append(c)
            items |= mine
        if group:
            new += self._apply_group(group)
        done = set(new)
        return [i for i in unique if i in done]

    def _applied(self, contributions: Sequence[Contribution]) -> set[uuid.UUID]:
        found: set[uuid.UUID] = set()
        for start in range(0, len(contributions), 100):
            keys = [marker_key(c, c.event_id.int % self.shards)
                    for c in contributions[start : start + 100]]  # fmt: skip
            pending: dict[str, Any] = {
                self.table: {"Keys": keys, "ConsistentRead": True, "ProjectionExpression": "sk"}
            }
            attempt = 0
            while pending:
                try:
                    response = self.client.batch_get_item(RequestItems=pending)
                except Exception as exc:
                    if error_code(exc) == "ResourceNotFoundException":
                        raise ResourceMissing("DynamoDB table", self.table) from exc
                    raise StorageUnavailable(
                        f"dynamodb batch_get_item: {error_code(exc) or exc}"
                    ) from exc
                for item in response.get("Responses", {}).get(self.table, []):
                    found.add(uuid.UUID(item["sk"]["S"].split("#", 1)[1]))
                pending = response.get("UnprocessedKeys") or {}
                if pending:
                    attempt += 1
                    if attempt >= self.backoff.max_attempts:
                        raise StorageUnavailable("dynamodb: marker keys still unprocessed")
                    self.backoff.sleep(self.backoff.delay(attempt))
        return found

    def _apply_group(self, group: list[Contribution]) -> list[uuid.UUID]:
        """One transaction: every marker (conditional) and the merged ADDs of the group."""
        attempt = 0
        while group:
            merged: dict[tuple[str, str], int] = defaultdict(int)
            for c in group:
                shard = c.event_id.int % self.shards
                for k, v in c.deltas.items():
                    if v:
                        merged[(counter_pk(k.grain, k.bucket, shard), counter_sk(k))] += v
            items: list[dict[str, Any]] = [
                {
                    "Put": {
                        "TableName": self.table,
                        "Item": {**marker_key(c, c.event_id.int % self.shards),
                                 "event_id": {"S": str(c.event_id)}},
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                }
                for c in group
            ]  # fmt: skip
            items += [self._add(pk, sk, v) for (pk, sk), v in merged.items() if v]
            try:
                self.client.transact_write_items(TransactItems=items)
                return [c.event_id for c in group]
            except Exception as exc:
                code = error_code(exc)
                if code == "ResourceNotFoundException":
                    raise ResourceMissing("DynamoDB table", self.table) from exc
                if code != "TransactionCanceledException":
                    raise StorageUnavailable(
                        f"dynamodb transact_write_items: {code or exc}"
                    ) from exc
                reasons = getattr(exc, "response", {}).get("CancellationReasons") or []
                applied = {
                    n for n, r in enumerate(reasons[: len(group)])
                    if r.get("Code") == "ConditionalCheckFailed"
                }  # fmt: skip
                if applied:
                    # Those events were counted before: drop them, re-send the rest at once.
                    group = [c for n, c in enumerate(group) if n not in applied]
                    continue
                # TransactionConflict / throttling: another writer held an item. Back off.
                attempt += 1
                if attempt >= self.backoff.max_attempts:
                    codes = sorted({r.get("Code", "?") for r in reasons} - {"None"})
                    raise StorageUnavailable(f"dynamodb transaction cancelled: {codes}") from exc
                self.backoff.sleep(self.backoff.delay(attempt))
        return []

    def _add(self, pk: str, sk: str, value: int) -> dict[str, Any]:
        return {
            "Update": {
                "TableName": self.table,
                "Key": {"pk": {"S": pk}, "sk": {"S": sk}},
                "UpdateExpression": "ADD v :d",
                "ExpressionAttributeValues": {":d": {"N": str(value)}},
            }
        }

    def correct(self, deltas: Mapping[CounterKey, int]) -> None:
        """Reconcile repair: ADD each correction to shard 0 (reads sum over shards).

        At most 100 counters change atomically (one transaction); a bigger repair is
        several transactions, each safe to re-run only through a fresh snapshot.
        """
        items = [
            self._add(counter_pk(k.grain, k.bucket, 0), counter_sk(k), v)
            for k, v in deltas.items()
            if v
        ]
        for start in range(0, len(items), TRANSACT_MAX):
            try:
                self.client.transact_write_items(TransactItems=items[start : start + 100])
            except Exception as exc:
                raise StorageUnavailable(f"dynamodb correct: {error_code(exc) or exc}") from exc

    # --- reads ------------------------------------------------------------------------
    def _query(self, pk: str, lo: str, hi: str) -> Iterator[dict[str, Any]]:
        request: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :lo AND :hi",
            "ExpressionAttributeValues": {":pk": {"S": pk}, ":lo": {"S": lo}, ":hi": {"S": hi}},
            "ConsistentRead": True,
        }
        while True:
            try:
                response = self.client.query(**request)
            except Exception as exc:
                if error_code(exc) == "ResourceNotFoundException":
                    raise ResourceMissing("DynamoDB table", self.table) from exc
                raise StorageUnavailable(f"dynamodb query: {error_code(exc) or exc}") from exc
            yield from response.get("Items", [])
            last = response.get("LastEvaluatedKey")
            if not last:
                return
            request["ExclusiveStartKey"] = last

    def _query_many(
        self, ranges: Sequence[tuple[str, str, str]]
    ) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """(pk, items) for each (pk, lo, hi), read ``read_parallelism`` partitions at a time.

        A window's reads are one Query per (grain, day, shard): a year of quarter hours
        is 1,460 of them, and one after the other they took as many round trips of
        latency (minutes on a moto server, tens of seconds on DynamoDB). Each call gets
        a pool of its own, so one long window does not queue the next request's reads."""
        if len(ranges) <= 1 or self.read_parallelism <= 1:
            for pk, lo, hi in ranges:
                yield pk, list(self._query(pk, lo, hi))
            return
        workers = min(self.read_parallelism, len(ranges))
        with ThreadPoolExecutor(workers, thread_name_prefix="ddb-read") as pool:
            pages = pool.map(lambda r: (r[0], list(self._query(*r))), ranges)
            yield from pages

    def _counters(self, pieces: Sequence[Piece]) -> dict[CounterKey, int]:
        """Counters (summed over shards) with bucket starts inside any of the pieces."""
        seen: dict[tuple[str, str], tuple[CounterKey, int]] = {}  # pieces may overlap
        ranges: list[tuple[str, str, str]] = []
        grain_of: dict[str, int] = {}
        spans = _merge_spans(pieces)
        self._check_days(spans)
        for grain, start, end in spans:
            for day_start, day_end in _days(start, end):
                for shard in range(self.shards):
                    pk = counter_pk(grain, day_start, shard)
                    grain_of[pk] = grain
                    ranges.append((pk, f"{day_start:010d}", f"{day_end - 1:010d}{_SEP}\U0010ffff"))
        for pk, items in self._query_many(ranges):
            for item in items:
                sk = item["sk"]["S"]
                seen[(pk, sk)] = (parse_counter(grain_of[pk], sk), int(item["v"]["N"]))
        totals: dict[CounterKey, int] = defaultdict(int)
        for key, value in seen.values():
            totals[key] += value  # the same counter in several shards adds up
        return dict(totals)

    def _check_days(self, spans: Sequence[tuple[int, int, int]]) -> None:
        """BadQuery (a 400) for a read over more UTC days than ``max_read_days``: every day
        is a Query per grain and shard, empty or not, so 1,000 monthly buckets were
        121,744 Queries, 80 s and their read units, for any key with the read scope (QA)."""
        if self.max_read_days is None:
            return
        day = 24 * 60
        days = {d for _, start, end in spans for d in range(start // day, -(-end // day))}
        if len(days) > self.max_read_days:
            raise BadQuery("end", f"the range spans {len(days)} UTC days; on DynamoDB a read"
                           f" spans at most {self.max_read_days} (ANALYTICS_DYNAMODB_MAX_READ_DAYS):"
                           " ask for a shorter range")  # fmt: skip

    def snapshot(self, start: int, end: int) -> AggregateSnapshot:
        snap = AggregateSnapshot()
        pieces = [Piece(g, start, end) for g in GRAINS]
        snap.counters = {k: v for k, v in self._counters(pieces).items() if v}
        ranges = [
            (f"M#{_day(day_start)}#{shard}", f"{day_start:010d}", f"{day_end - 1:010d}#~")
            for day_start, day_end in _days(start, end)
            for shard in range(self.shards)
        ]
        for _, items in self._query_many(ranges):
            snap.applied.update(uuid.UUID(item["sk"]["S"].split("#", 1)[1]) for item in items)
        return snap

    def summarize(
        self, windows: Sequence[Sequence[Piece]], event_type: str | None
    ) -> list[Summary]:
        counters = self._counters([p for w in windows for p in w])
        return [
            summarize_counters(counters, [(p.grain, p.start, p.end) for p in w], event_type)
            for w in windows
        ]

    def breakdown(self, window: Sequence[Piece], *, top: int) -> Breakdown:
        counters = self._counters(list(window))
        return breakdown_counters(counters, [(p.grain, p.start, p.end) for p in window], top)


def _merge_spans(pieces: Sequence[Piece]) -> list[tuple[int, int, int]]:
    """Per grain, the union of the pieces' [start, end) spans as disjoint spans: each base
    bucket is read once however many windows share it."""
    out: list[tuple[int, int, int]] = []
    for grain in sorted({p.grain for p in pieces}):
        spans = sorted((p.start, p.end) for p in pieces if p.grain == grain and p.end > p.start)
        for start, end in spans:
            if out and out[-1][0] == grain and start <= out[-1][2]:
                out[-1] = (grain, out[-1][1], max(out[-1][2], end))
            else:
                out.append((grain, start, end))
    return out


def _days(start: int, end: int) -> Iterator[tuple[int, int]]:
    """Split [start, end) epoch minutes at UTC midnights: (start, end) per day touched."""
    day = 24 * 60
    cur = start
    while cur < end:
        nxt = min(end, (cur // day + 1) * day)
        yield cur, nxt
        cur = nxt
