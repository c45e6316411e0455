"""SQLite aggregate store: exactly-once counters in the events' database file.

One generic counter table keyed (kind, grain, bucket, event_type, dim, dim2) and one
applied-marker table. ``apply`` inserts each event's marker and, only when the insert was
new, adds its increments, all in one ``BEGIN IMMEDIATE`` transaction: a redelivered or
retried event, or one whose worker died before this commit, is counted exactly once.
Window queries join a small VALUES list of (window, grain, start, end) against the
primary key, so they read only the base buckets of the windows asked for.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from analytics.adapters.sqlite_store import SQLiteDatabase, translating_sqlite_errors
from analytics.domain.aggregation import (
    COUNT,
    KINDS,
    ORDERS,
    PRODUCT,
    PRODUCT_REVENUE,
    PURCHASE,
    REVENUE,
    SESSION,
    SESSION_ALL,
    USER,
    USER_ALL,
    Breakdown,
    Contribution,
    CounterKey,
    Summary,
    rank_products,
)
from analytics.domain.buckets import GRAINS, Piece
from analytics.domain.ports import AggregateSnapshot

SCHEMA = """
CREATE TABLE IF NOT EXISTS agg_counters (
    kind       TEXT NOT NULL,
    grain      INTEGER NOT NULL,
    bucket     INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    dim        TEXT NOT NULL,
    dim2       TEXT NOT NULL,
    value      INTEGER NOT NULL,
    PRIMARY KEY (kind, grain, bucket, event_type, dim, dim2)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS agg_applied (
    event_id TEXT PRIMARY KEY,
    minute   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS agg_applied_by_minute ON agg_applied (minute);
"""

_SUM = "SUM(c.value)"
_UPSERT = (
    "INSERT INTO agg_counters (kind, grain, bucket, event_type, dim, dim2, value)"
    " VALUES (?,?,?,?,?,?,?) ON CONFLICT(kind, grain, bucket, event_type, dim, dim2)"
    " DO UPDATE SET value = value + excluded.value"
)


def _windows_cte(windows: Sequence[Sequence[Piece]]) -> str:
    """A VALUES list of (window index, grain, start, end); integers only, so inlined."""
    rows = [
        f"({int(i)},{int(p.grain)},{int(p.start)},{int(p.end)})"
        for i, w in enumerate(windows)
        for p in w
    ]
    return "WITH w(i, g, s, e) AS (VALUES " + ",".join(rows) + ") "


@translating_sqlite_errors
class SQLiteAggregateStore:
    def __init__(self, db: SQLiteDatabase) -> None:
        self.db = db
        self.db.connect().executescript(SCHEMA)

    # --- writes -----------------------------------------------------------------------
    def apply(self, contributions: Sequence[Contribution]) -> list[uuid.UUID]:
        if not contributions:
            return []
        new: list[uuid.UUID] = []
        merged: dict[CounterKey, int] = defaultdict(int)
        with self.db.transaction() as conn:
            # Inside BEGIN IMMEDIATE nobody else writes: read which markers exist,
            # then insert the rest in one statement (no per-event round trip).
            ids = list(dict.fromkeys(str(c.event_id) for c in contributions))
            seen: set[str] = set()
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                seen.update(
                    r[0]
                    for r in conn.execute(
                        f"SELECT event_id FROM agg_applied WHERE event_id IN ({marks})",
                        chunk,
                    )
                )
            fresh: list[tuple[str, int]] = []
            for c in contributions:
                key = str(c.event_id)
                if key in seen:
                    continue  # already counted: redelivery, retry or repair
                seen.add(key)
                fresh.append((key, c.minute))
                new.append(c.event_id)
                for k, v in c.deltas.items():
                    merged[k] += v
            conn.executemany("INSERT INTO agg_applied (event_id, minute) VALUES (?, ?)", fresh)
            conn.executemany(_UPSERT, [(*k, v) for k, v in merged.items()])
        return new

    def correct(self, deltas: Mapping[CounterKey, int]) -> None:
        if not deltas:
            return
        with self.db.transaction() as conn:
            conn.executemany(_UPSERT, [(*k, v) for k, v in deltas.items() if v])
            conn.executemany(
                "DELETE FROM agg_counters WHERE kind=? AND grain=? AND bucket=?"
                " AND event_type=? AND dim=? AND dim2=? AND value=0",
                list(deltas),
            )

    # --- reads ------------------------------------------------------------------------
    def snapshot(self, start: int, end: int) -> AggregateSnapshot:
        conn = self.db.read()
        snap = AggregateSnapshot()
        conn.execute("BEGIN")  # one read transaction: counters and markers agree
        try:
            for kind in KINDS:
                for grain in GRAINS:
                    for row in conn.execute(
                        "SELECT kind, grain, bucket, event_type, dim, dim2, value"
                        " FROM agg_counters WHERE kind=? AND grain=? AND bucket>=? AND bucket<?"
                        " AND value != 0",
                        (kind, grain, start, end),
                    ):
                        snap.counters[CounterKey(*row[:6])] = int(row[6])
            snap.applied = {
                uuid.UUID(r[0])
                for r in conn.execute(
                    "SELECT event_id FROM agg_applied WHERE minute>=? AND minute<?", (start, end)
                )
            }
        finally:
            conn.execute("COMMIT")
        return snap

    def _grouped(
        self, windows: Sequence[Sequence[Piece]], select: str, kind: str, where: str = "",
        params: Iterable[object] = (), group: str = "w.i",
    ) -> list[tuple[object, ...]]:  # fmt: skip
        base = (
            " FROM w CROSS JOIN agg_counters c"
            " ON c.kind=? AND c.grain=w.g AND c.bucket>=w.s AND c.bucket<w.e"
            f" WHERE c.value > 0 {where}"
        )
        sql = _windows_cte(windows) + f"SELECT w.i, {select}{base} GROUP BY {group}"
        try:
            return list(self.db.read().execute(sql, (kind, *params)))
        except sqlite3.OperationalError as exc:
            if "integer overflow" not in str(exc) or not select.endswith(_SUM):
                raise
        # SQLite's SUM stops at 2^63 (micros: 9.2e12 currency units in one window); Python's
        # integers do not. The rows, summed here, by the same key as the GROUP BY.
        cols = select[: -len(_SUM)]
        rows = self.db.read().execute(
            _windows_cte(windows) + f"SELECT w.i, {cols}c.value{base}", (kind, *params)
        )
        sums: dict[tuple[object, ...], int] = defaultdict(int)
        for *key, value in rows:
            sums[tuple(key)] += int(value)
        return [(*key, total) for key, total in sums.items()]

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """One read transaction: the numbers of one answer agree with each other."""
        conn = self.db.read()
        conn.execute("BEGIN")
        try:
            yield
        finally:
            conn.execute("COMMIT")

    def summarize(
        self, windows: Sequence[Sequence[Piece]], event_type: str | None
    ) -> list[Summary]:
        if not any(windows):
            return [Summary() for _ in windows]
        with self._reading():
            return self._summarize(windows, event_type)

    def _summarize(
        self, windows: Sequence[Sequence[Piece]], event_type: str | None
    ) -> list[Summary]:
        out = [Summary() for _ in windows]
        et_where, et_params = ("AND c.event_type=?", (event_type,)) if event_type else ("", ())
        for i, n in self._grouped(windows, "SUM(c.value)", COUNT, et_where, et_params):
            out[int(i)].count = int(n)  # type: ignore[call-overload]
        # without a type filter, the all-types members: one row per member and bucket
        user_kind, session_kind = (USER, SESSION) if event_type else (USER_ALL, SESSION_ALL)
        distinct = "COUNT(DISTINCT c.dim)"
        for i, n in self._grouped(windows, distinct, user_kind, et_where, et_params):
            out[int(i)].unique_users = int(n)  # type: ignore[call-overload]
        for i, n in self._grouped(windows, distinct, session_kind, et_where, et_params):
            out[int(i)].unique_sessions = int(n)  # type: ignore[call-overload]
        if event_type in (None, PURCHASE):
            for kind, attr in ((REVENUE, "revenue_micros"), (ORDERS, "orders")):
                for i, cur, v in self._grouped(
                    windows, "c.dim, SUM(c.value)", kind, "AND c.event_type=?", (PURCHASE,),
                    group="w.i, c.dim",
                ):  # fmt: skip
                    getattr(out[int(i)], attr)[str(cur)] = int(v)  # type: ignore[call-overload]
        return out

    def breakdown(self, window: Sequence[Piece], *, top: int) -> Breakdown:
        if not window:
            return Breakdown()
        with self._reading():
            return self._breakdown(window, top)

    def _breakdown(self, window: Sequence[Piece], top: int) -> Breakdown:
        ws = [window]
        by_type = {
            str(t): int(n)  # type: ignore[call-overload]
            for _, t, n in self._grouped(ws, "c.event_type, SUM(c.value)", COUNT, group="w.i, c.event_type")
        }  # fmt: skip
        converted_rows = self._grouped(
            ws, "COUNT(DISTINCT c.dim)", SESSION, "AND c.event_type=?", (PURCHASE,)
        )
        converted = int(converted_rows[0][1]) if converted_rows else 0  # type: ignore[call-overload]
        p_count = {
            str(p): int(n)  # type: ignore[call-overload]
            for _, p, n in self._grouped(ws, "c.dim, SUM(c.value)", PRODUCT, group="w.i, c.dim")
        }
        p_rev: dict[str, dict[str, int]] = defaultdict(dict)
        for _, p, cur, v in self._grouped(
            ws, "c.dim, c.dim2, SUM(c.value)", PRODUCT_REVENUE, "AND c.event_type=?",
            (PURCHASE,), group="w.i, c.dim, c.dim2",
        ):  # fmt: skip
            p_rev[str(p)][str(cur)] = int(v)  # type: ignore[call-overload]
        return rank_products(by_type, converted, p_count, dict(p_rev), top)
