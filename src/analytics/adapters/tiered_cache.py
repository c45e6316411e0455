"""Two cache levels behind the ``Cache`` port: a small in-process LRU in front of Redis.

Which data lives where (README, "Two cache levels"):

- **local** (this process, at most ``local_cache_entries`` values): every value this
  process computed, for its own TTL (closed buckets a day, an hour on the current UTC
  day, open buckets 10 s, dashboard answers 5 s), and long-lived values (a TTL of at least ``local_cache_min_ttl_s``: closed
  buckets) that another process computed and this one found in Redis.
- **redis** (shared by every process): everything, with the TTL the caller chose.

Why neither level serves stale data: every cache key already contains the invalidation
versions of the UTC days its value covers, and those versions come from Redis on every
query: read, or held by the process only while Redis's invalidation messages say they are
unchanged (``redis_cache.VersionWatch``). A late event or a reconcile bumps a day's
version in Redis, so the next query asks both levels for a new key and recomputes; the old
entries are simply never asked for again (and age out of the LRU). When Redis cannot
answer, queries skip both levels and read storage.

A ``lookup`` is one round trip: the Redis script resolves each entry's key under the
current versions and is told which key this process already holds a value under; for
those it answers "current" without sending the value, for the others it sends the value
(or a miss) in the same reply. When every entry is held here, a plain ``MGET`` of the day
versions confirms them instead (a Lua call costs Redis ~15x a small ``MGET``); only if one
of them is no longer current does a second round trip (the script) follow; and while the
versions are held (above), that read costs no round trip at all.

A value written to Redis carries one flag byte saying whether it is long-lived, so a
process that finds it in Redis (computed by another process) may keep it locally too (a
short-lived one is not: its remaining TTL is unknown here).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

_LONG, _SHORT = b"\x01", b"\x00"
_UNAVAILABLE = object()  # the shared level could not be read


class LevelStats:
    """Cumulative lookups of one level (metrics read ``hits``/``misses``)."""

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.errors = 0

    def ratio(self) -> float | None:
        total = self.hits + self.misses
        return self.hits / total if total else None


class TieredCache:
    """Cache port over another cache (``remote``). ``isinstance(tiered, type(remote))``
    holds, like the breaker decorators (code that checks the built adapter keeps working)."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return self.__dict__["remote"].__class__

    def __init__(
        self,
        remote: Any,
        *,
        max_entries: int = 2048,
        min_ttl_s: int = 3600,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.remote = remote
        self.max_entries = max_entries
        self.min_ttl_s = min_ttl_s
        self.clock = clock
        self._lru: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()
        self.local_stats = LevelStats()
        self.redis_stats = LevelStats()

    # --- the port's counters: a lookup is a hit when either level had the value -------
    @property
    def hits(self) -> int:
        return self.local_stats.hits + self.redis_stats.hits

    @property
    def misses(self) -> int:
        return self.redis_stats.misses

    @property
    def errors(self) -> int:
        return int(getattr(self.remote, "errors", 0))

    def __len__(self) -> int:
        return len(self._lru)

    # --- local level --------------------------------------------------------------------
    # ``_held`` maps a versioned key's base (the key up to its last ':') to the full key
    # held here, so a lookup can tell Redis which version it already holds. It is only a
    # hint: a value is served locally only when Redis resolves exactly that key.
    def _get_local(self, key: str, now: float) -> bytes | None:
        entry = self._lru.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires <= now:
            self._drop(key)
            return None
        self._lru.move_to_end(key)
        return value

    def _drop(self, key: str) -> None:
        self._lru.pop(key, None)
        base = key.rpartition(":")[0]
        if self._held.get(base) == key:
            del self._held[base]

    def _put_local(self, key: str, value: bytes, ttl_s: float, now: float) -> None:
        if self.max_entries <= 0:
            return
        self._lru[key] = (value, now + ttl_s)
        self._lru.move_to_end(key)
        base = key.rpartition(":")[0]
        if base:
            self._held[base] = key
        while len(self._lru) > self.max_entries:
            self._drop(next(iter(self._lru)))

    # --- port ---------------------------------------------------------------------------
    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now = self.clock()
        out: list[bytes | None] = [None] * len(keys)
        with self._lock:
            for i, key in enumerate(keys):
                out[i] = self._get_local(key, now)
        missing = [i for i, v in enumerate(out) if v is None]
        self.local_stats.hits += len(keys) - len(missing)
        self.local_stats.misses += len(missing)
        if not missing:
            return out
        found = self.remote.get_many([keys[i] for i in missing])
        promote: list[tuple[str, bytes]] = []
        for i, raw in zip(missing, found, strict=True):
            out[i] = self._unflag(keys[i], raw, promote)
        if promote:
            with self._lock:
                for key, value in promote:
                    self._put_local(key, value, self.min_ttl_s, now)
        return out

    def _unflag(
        self, key: str, raw: bytes | None, promote: list[tuple[str, bytes]]
    ) -> bytes | None:
        if raw is None or not raw:
            self.redis_stats.misses += 1
            return None
        self.redis_stats.hits += 1
        flag, value = raw[:1], raw[1:]
        if flag == _LONG:
            promote.append((key, value))
        elif flag != _SHORT:  # written without the flag (an older build): no promotion
            value = raw
        return value

    def lookup(
        self, entries: Sequence[tuple[str, Sequence[str]]]
    ) -> list[tuple[str, bytes | None]] | None:
        """One remote round trip: it resolves every entry's key under the current versions
        (in Redis) and is told which key this process already holds a value under; for
        those the answer is "current" and the value is served from memory, the others'
        values come back in the same reply. When all are held, a read of the versions
        alone confirms them (the script follows only if one is no longer current)."""
        if not entries:
            return []
        now = self.clock()
        held: list[str | None] = []
        local: list[bytes | None] = []
        with self._lock:
            for base, _ in entries:
                key = self._held.get(base)
                value = self._get_local(key, now) if key is not None else None
                held.append(key if value is not None else None)
                local.append(value)
        if all(k is not None for k in held):
            confirmed = self._confirm(entries, held, local)  # type: ignore[arg-type]
            if confirmed is _UNAVAILABLE:
                return None  # no second attempt at a Redis that just failed
            if confirmed is not None:
                return confirmed  # type: ignore[return-value]
        found = self.remote.lookup_held(entries, held)
        if found is None:
            return None  # unavailable: both levels are skipped, queries read storage
        out: list[tuple[str, bytes | None]] = []
        promote: list[tuple[str, bytes]] = []
        for i, (key, raw) in enumerate(found):
            if raw is True:
                self.local_stats.hits += 1
                out.append((key, local[i]))
                continue
            self.local_stats.misses += 1
            out.append((key, self._unflag(key, raw, promote)))  # type: ignore[arg-type]
        if promote:
            with self._lock:
                for key, value in promote:
                    self._put_local(key, value, self.min_ttl_s, now)
        return out

    def _confirm(
        self,
        entries: Sequence[tuple[str, Sequence[str]]],
        held: Sequence[str],
        local: Sequence[bytes | None],
    ) -> list[tuple[str, bytes | None]] | object | None:
        """Every entry is held here: one plain read of the day versions (cheaper for Redis
        than the lookup script) tells whether all are current. None when any entry is not
        current (the caller then does the full lookup, which also fetches what changed),
        ``_UNAVAILABLE`` when the versions cannot be read."""
        scopes = list(dict.fromkeys(s for _, sc in entries for s in sc))
        versions = self.remote.versions(scopes)
        if versions is None:
            return _UNAVAILABLE
        v = dict(zip(scopes, versions, strict=True))
        keys = [base + ":" + ".".join(str(v[s]) for s in sc) for base, sc in entries]
        if keys != list(held):
            return None
        self.local_stats.hits += len(keys)
        return list(zip(keys, local, strict=True))

    # --- whole documents (LocalDocuments port): local level only ------------------------
    def get_local(self, key: str) -> bytes | None:
        now = self.clock()
        with self._lock:
            value = self._get_local(key, now)
        if value is None:
            self.local_stats.misses += 1
        else:
            self.local_stats.hits += 1
        return value

    def put_local(self, key: str, value: bytes, ttl_s: int) -> None:
        if ttl_s < self.min_ttl_s:
            return  # short-lived values never enter the local level
        with self._lock:
            self._put_local(key, value, ttl_s, self.clock())

    def set_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        """Write through: every value this process computed stays here for its own TTL
        (it would be served from Redis for exactly as long, under the same versioned key),
        and goes to Redis flagged long- or short-lived for the other processes."""
        now = self.clock()
        if items:
            with self._lock:
                for key, value, ttl in items:
                    self._put_local(key, value, ttl, now)
        self.remote.set_many(
            [(k, (_LONG if t >= self.min_ttl_s else _SHORT) + v, t) for k, v, t in items]
        )

    def versions(self, scopes: Sequence[str]) -> list[int] | None:
        return self.remote.versions(scopes)  # type: ignore[no-any-return]  # never this LRU

    def bump(self, scopes: Iterable[str]) -> None:
        self.remote.bump(scopes)

    def stats(self) -> dict[str, Any]:
        return {
            "local": {"entries": len(self._lru), "hits": self.local_stats.hits,
                      "misses": self.local_stats.misses, "hit_ratio": self.local_stats.ratio()},
            "redis": {"hits": self.redis_stats.hits, "misses": self.redis_stats.misses,
                      "hit_ratio": self.redis_stats.ratio()},
        }  # fmt: skip

    def __getattr__(self, name: str) -> Any:
        return getattr(self.remote, name)
