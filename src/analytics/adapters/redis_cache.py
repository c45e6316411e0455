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


class RedisCache:
    def __init__(self, client: redis.Redis, *, namespace: str, retry_after_s: float = 5.0) -> None:
        self.client = client
        self.prefix = f"{namespace}:cache:"
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
        return [int(v) for v in values]

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
