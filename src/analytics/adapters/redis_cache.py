"""Redis cache behind the ``Cache`` port: pipelined bulk reads/writes, per-day versions.

Keys live under ``<namespace>:cache:``. Values: ``...:v:<key>`` with a TTL chosen by the
caller (closed buckets long, open bucket short, dashboard seconds). Versions:
``...:ver:<YYYY-MM-DD>``, one integer per UTC day, bumped by the worker after it counted
events of that day; cached values carry the versions they were computed under in their
key, so a bump retires them at once and they simply expire. A version starts at the
current time in microseconds, not at 0: a Redis that lost its data (restarted without
persistence, flushed) starts every version afresh, and a value an API process still holds
in its local level under an old version must never match again.

Reads are best effort: any Redis error counts as a miss (``errors`` is incremented) and
opens a short circuit (``retry_after_s``) during which the cache is skipped, so a Redis
outage makes queries slower (served from storage), never failing or hanging. ``bump``
raises :class:`CacheUnavailable` instead: the worker's message is then retried (counting
is idempotent) until the invalidation lands, so a value cached before an event is never
served after Redis comes back.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis
import structlog

from analytics.domain.errors import CacheUnavailable

log = structlog.get_logger("analytics.cache")

VERSION_TTL_S = 40 * 86_400  # versions outlive every cached value that names them

# One round trip for a versioned read: resolve each entry's key from the current versions
# of its scopes, then read it. ARGV: prefix, now (us: the first value of a missing
# version), the versions' TTL, then per entry: base, held, n, scope_1..scope_n.
# ``held`` is the key under which the caller already holds a value (its in-process level),
# or '': when it equals the resolved key the value is not sent back (the reply is the
# integer 1: "what you hold is current"). Otherwise the reply is the value, or '' (miss).
# (Keys are computed inside the script, so this needs a single Redis, not a Cluster,
# like the Dramatiq Redis broker itself.)
_LOOKUP = """
local prefix = ARGV[1]
local now, ttl = ARGV[2], ARGV[3]
local i = 4
local res = {}
local seen = {}
while i <= #ARGV do
  local base = ARGV[i]
  local held = ARGV[i + 1]
  local n = tonumber(ARGV[i + 2])
  i = i + 3
  local parts = {}
  for j = 0, n - 1 do
    local s = ARGV[i + j]
    local v = seen[s]
    if v == nil then
      v = redis.call('GET', prefix .. 'ver:' .. s)
      if not v then
        v = now
        redis.call('SET', prefix .. 'ver:' .. s, v, 'EX', ttl)
      end
      seen[s] = v
    end
    parts[#parts + 1] = v
  end
  i = i + n
  local key = base .. ':' .. table.concat(parts, '.')
  res[#res + 1] = key
  if held == key then
    res[#res + 1] = 1
  else
    res[#res + 1] = redis.call('GET', prefix .. 'v:' .. key) or ''
  end
end
return res
"""


def _now_us() -> int:
    """Where a version starts: after every version an earlier Redis life could have
    reached (those start from their own start time and gain one per bump)."""
    return time.time_ns() // 1000


#: ``lookup_held``'s answer for an entry whose held key is current (its value not sent).
HELD = True


class VersionWatch:
    """Day versions held in this process for as long as Redis says they have not changed.

    Redis's server-assisted client-side caching: one connection of this process asks for
    broadcast tracking of every key under the version prefix (``CLIENT TRACKING ON
    REDIRECT <itself> BCAST PREFIX``) and listens on ``__redis__:invalidate``; Redis then
    sends it a message whenever any version key is changed (bumped, set, expired, evicted,
    flushed). A version read from Redis is kept here and answered without a round trip
    until such a message names its key, or ``hold_s`` after it was read, whichever comes
    first. Every answer first drains the messages already received (a non-blocking read).

    Why no stale version is answered:

    - Redis writes the message to this connection before it answers any later command of
      anyone: the worker's bump and everything after it (its task status, its ack) come
      after the message is in this process's socket (on one host: in its receive buffer
      once Redis's write returns), and the drain reads it before the next answer.
    - A read that overlaps a change is not kept: ``mark`` counts the messages seen before
      the read, ``keep`` drops the values if any arrived since (the read may predate the
      change).
    - A broken, closed or unwatched connection (Redis restarted, a network fault) drops
      everything held, and versions are read from Redis on every query until the watch
      is re-established (after ``retry_s``). A Redis without tracking (before 6.0, or a
      proxy that refuses ``CLIENT TRACKING``) turns the watch off for good.
    - ``hold_s`` bounds what a fault this cannot see could cost: across a network, a lost
      and retransmitted message, or a peer gone silently, holds a version at most that
      long. On one host (the embedded default) there is no such window.
    """

    CHANNEL = b"__redis__:invalidate"

    def __init__(
        self, client: redis.Redis, key_prefix: str, *, hold_s: float = 1.0, retry_s: float = 1.0
    ) -> None:
        pool = client.connection_pool
        self._connect_with = (pool.connection_class, {**pool.connection_kwargs, "protocol": 2})
        self.key_prefix = key_prefix
        self.hold_s = hold_s
        self.retry_s = retry_s
        self.supported = True
        self._lock = threading.Lock()
        self._conn: Any = None
        self._pid = 0
        self._retry_at = 0.0
        self._held: dict[str, tuple[int, float]] = {}  # key -> (version, read at)
        self._seen = 0  # invalidation messages (and losses of the watch) so far

    def get(self, keys: Sequence[str]) -> list[int] | None:
        """The versions of ``keys`` when every one is held and current, else None."""
        with self._lock:
            if not self._drain():
                return None
            oldest = time.monotonic() - self.hold_s
            out = []
            for key in keys:
                entry = self._held.get(key)
                if entry is None or entry[1] < oldest:
                    return None
                out.append(entry[0])
            return out

    def mark(self) -> tuple[int, float] | None:
        """Before reading versions from Redis: the token ``keep`` needs (None: no watch)."""
        with self._lock:
            if not self._drain():
                return None
            return self._seen, time.monotonic()

    def keep(self, token: tuple[int, float] | None, keys: Sequence[str], values: Sequence[int]) -> None:
        """After the read: hold the values, unless a change was announced meanwhile."""
        if token is None:
            return
        with self._lock:
            if not self._drain() or self._seen != token[0]:
                return
            for key, value in zip(keys, values, strict=True):
                self._held[key] = (value, token[1])

    # --- under the lock -----------------------------------------------------------------
    def _drain(self) -> bool:
        """Apply every message received so far; False when there is no working watch."""
        if self._conn is None or self._pid != os.getpid():
            self._conn = None  # a forked child never reads its parent's socket
            if not self.supported or time.monotonic() < self._retry_at:
                return False
            if not self._watch():
                return False
        try:
            while self._conn.can_read(timeout=0):
                message = self._conn.read_response()
                if not (isinstance(message, list) and message[:2] == [b"message", self.CHANNEL]):
                    continue  # subscribe confirmations
                keys = message[2]
                self._seen += 1
                if keys is None:  # FLUSHDB / FLUSHALL: everything changed
                    self._held.clear()
                    continue
                for key in keys:
                    self._held.pop(key.decode() if isinstance(key, bytes) else key, None)
        except (redis.RedisError, OSError) as exc:
            log.warning("cache version watch lost", error=str(exc))
            self._lose()
            return False
        return True

    def _watch(self) -> bool:
        cls, kwargs = self._connect_with
        conn = cls(**kwargs)
        try:
            conn.connect()
            conn.send_command("CLIENT", "ID")
            own_id = conn.read_response()
            conn.send_command(
                "CLIENT", "TRACKING", "ON", "REDIRECT", own_id, "BCAST", "PREFIX", self.key_prefix
            )
            conn.read_response()
            conn.send_command("SUBSCRIBE", self.CHANNEL)
            conn.read_response()
        except redis.ResponseError as exc:  # no tracking here: read versions every time
            conn.disconnect()
            self.supported = False
            log.warning("cache version watch unsupported by this Redis", error=str(exc))
            return False
        except (redis.RedisError, OSError):
            conn.disconnect()
            self._retry_at = time.monotonic() + self.retry_s
            return False
        self._conn, self._pid = conn, os.getpid()
        return True

    def _lose(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.disconnect()
        self._conn = None
        self._held.clear()
        self._seen += 1  # a read in flight across the loss is not kept either
        self._retry_at = time.monotonic() + self.retry_s


class RedisCache:
    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str,
        retry_after_s: float = 5.0,
        version_hold_s: float = 0.0,
    ) -> None:
        self.client = client
        self.prefix = f"{namespace}:cache:"
        # Versions held in-process between reads (``VersionWatch``); 0: read every time.
        self.watch = (
            VersionWatch(client, self.prefix + "ver:", hold_s=version_hold_s)
            if version_hold_s > 0
            else None
        )
        self.retry_after_s = retry_after_s
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self._down_until = 0.0
        self._lock = threading.Lock()
        self._lookup = client.register_script(_LOOKUP)
        self._local = threading.local()  # per thread: the connection lookups use

    # --- circuit ----------------------------------------------------------------------
    def _available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: Exception, op: str) -> None:
        with self._lock:
            self.errors += 1
            self._down_until = time.monotonic() + self.retry_after_s
        log.warning("cache unavailable", op=op, error=str(exc), retry_after_s=self.retry_after_s)

    def _count(self, hits: int, misses: int) -> None:
        with self._lock:
            self.hits += hits
            self.misses += misses

    # --- port -------------------------------------------------------------------------
    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        if not self._available():
            self._count(0, len(keys))
            return [None] * len(keys)
        try:
            values = self.client.mget([self.prefix + "v:" + k for k in keys])
        except (redis.RedisError, OSError) as exc:
            self._failed(exc, "get_many")
            self._count(0, len(keys))
            return [None] * len(keys)
        out = [v if isinstance(v, bytes) else None for v in values]
        hits = sum(v is not None for v in out)
        self._count(hits, len(out) - hits)
        return out

    def set_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        if not items or not self._available():
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for key, value, ttl in items:
                pipe.set(self.prefix + "v:" + key, value, ex=ttl)
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._failed(exc, "set_many")

    def versions(self, scopes: Sequence[str]) -> list[int] | None:
        if not self._available():
            return None
        if not scopes:
            return []
        keys = [self.prefix + "ver:" + s for s in scopes]
        watch = self.watch
        if watch is not None:
            held = watch.get(keys)
            if held is not None:
                return held
            token = watch.mark()
        try:
            values = self._call("MGET", *keys)
            if None in values:  # first read of a day in this Redis's life: start it
                pipe = self.client.pipeline(transaction=False)
                now = _now_us()
                for key, value in zip(keys, values, strict=True):
                    if value is None:
                        pipe.set(key, now, nx=True, ex=VERSION_TTL_S)
                pipe.mget(keys)
                values = pipe.execute()[-1]
        except (redis.RedisError, OSError) as exc:
            self._failed(exc, "versions")
            return None
        out = [int(v) for v in values]
        if watch is not None:
            watch.keep(token, keys, out)
        return out

    def lookup(
        self, entries: Sequence[tuple[str, Sequence[str]]]
    ) -> list[tuple[str, bytes | None]] | None:
        found = self.lookup_held(entries, None)
        if found is None:
            return None
        return [(k, None if v is HELD else v) for k, v in found]  # type: ignore[misc]

    def lookup_held(
        self, entries: Sequence[tuple[str, Sequence[str]]], held: Sequence[str | None] | None
    ) -> list[tuple[str, bytes | bool | None]] | None:
        """``lookup``, told per entry which key the caller already holds a value under:
        for an entry whose held key is the current one the answer is ``HELD`` (``True``)
        instead of the value (not read, not sent). Still one round trip."""
        if not entries:
            return []
        if not self._available():
            self._count(0, len(entries))
            return None
        argv: list[str | int] = [self.prefix, _now_us(), VERSION_TTL_S]
        for i, (base, scopes) in enumerate(entries):
            argv += [base, (held[i] or "") if held is not None else "", len(scopes), *scopes]
        try:
            flat = self._evalsha(argv)
        except (redis.RedisError, OSError) as exc:
            self._failed(exc, "lookup")
            self._count(0, len(entries))
            return None
        out: list[tuple[str, bytes | bool | None]] = []
        hits = misses = 0
        for k in range(0, len(flat), 2):
            key = flat[k].decode() if isinstance(flat[k], bytes) else str(flat[k])
            raw = flat[k + 1]
            if isinstance(raw, bytes):
                value: bytes | bool | None = raw or None
                hits += raw != b""
                misses += raw == b""
            else:
                value = HELD  # the integer 1: the caller's own copy is current
            out.append((key, value))
        self._count(hits, misses)
        return out

    def _evalsha(self, argv: Sequence[str | int]) -> list[Any]:
        """The lookup script (an unknown script is loaded and sent again)."""
        try:
            return self._call("EVALSHA", self._lookup.sha, 0, *argv)
        except redis.exceptions.NoScriptError:
            self._lookup.sha = self.client.script_load(_LOOKUP)
            return self._call("EVALSHA", self._lookup.sha, 0, *argv)

    def _call(self, *command: str | int) -> Any:
        """One command on this thread's own connection.

        Reads are on the path of every cached answer, and redis-py's per-command layers
        (pool checkout with a readability poll, retry wrapper, observability hooks) cost
        about as much as the round trip itself; a thread keeps one connection (made like
        the pool's, with its timeouts) and talks to it directly. Same behaviour otherwise:
        a broken connection is dropped and the command tried once more on a fresh one
        (the client's own retry policy); any other failure leaves the connection closed
        (never half-read) and is raised. Only for read-only commands (safe to resend)."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():  # first use in this thread, or forked
            pool = self.client.connection_pool
            conn = local.conn = pool.connection_class(**pool.connection_kwargs)
            local.pid = os.getpid()
        for attempt in (1, 2):
            try:
                conn.send_command(*command)
                return conn.read_response()
            except redis.ResponseError:
                raise  # a complete reply: the connection is fine
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                conn.disconnect()
                if attempt == 2:
                    raise
            except BaseException:
                conn.disconnect()
                raise
        raise AssertionError("unreachable")

    def bump(self, scopes: Iterable[str]) -> None:
        # No circuit here: invalidation is worth one attempt even right after an error.
        names = list(scopes)
        if not names:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            now = _now_us()
            for s in names:
                pipe.set(self.prefix + "ver:" + s, now, nx=True, ex=VERSION_TTL_S)
                pipe.incr(self.prefix + "ver:" + s)
                pipe.expire(self.prefix + "ver:" + s, VERSION_TTL_S)
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._failed(exc, "bump")
            raise CacheUnavailable(f"cache invalidation failed: {exc}") from exc

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "errors": self.errors}
