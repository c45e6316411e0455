"""TaskStatusStore on Redis: one hash per task, ``<namespace>:task:<task_id>``.

Each field holds a JSON value; ``_rank`` holds the rank of the last applied update. One
Lua script applies an update atomically (monotonic by rank, ``first`` fields only where
absent) and renews the TTL, so hooks racing from several processes cannot regress a
record.
"""

from __future__ import annotations

from typing import Any

import msgspec
import redis

from analytics.domain.errors import StorageUnavailable
from analytics.domain.tasks import TaskStatus, TaskUpdate

_APPLY = """
local key = KEYS[1]
local cur = tonumber(redis.call('HGET', key, '_rank') or '-1')
local rank = tonumber(ARGV[1])
local nfirst = tonumber(ARGV[3])
local i = 4
for _ = 1, nfirst do
  local old = redis.call('HGET', key, ARGV[i])
  if (not old) or old == 'null' then redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
  i = i + 2
end
if rank >= cur then
  redis.call('HSET', key, '_rank', ARGV[1])
  while i < #ARGV do
    redis.call('HSET', key, ARGV[i], ARGV[i + 1])
    i = i + 2
  end
end
redis.call('PEXPIRE', key, ARGV[2])
return 1
"""

_encode = msgspec.json.Encoder().encode
_decode_status = msgspec.json.Decoder(TaskStatus).decode


class RedisTaskStatusStore:
    def __init__(self, client: redis.Redis, *, namespace: str, ttl_s: int) -> None:
        self.client = client
        self.namespace = namespace
        self.ttl_ms = int(ttl_s * 1000)
        self._apply = client.register_script(_APPLY)

    def key(self, task_id: str) -> str:
        return f"{self.namespace}:task:{task_id}"

    def _args(self, update: TaskUpdate) -> list[Any]:
        args: list[Any] = [update.rank, self.ttl_ms, len(update.first)]
        for name, value in update.first.items():
            args += [name, _encode(value)]
        for name, value in update.fields.items():
            args += [name, _encode(value)]
        return args

    def apply(self, update: TaskUpdate) -> None:
        try:
            self._apply(keys=[self.key(update.task_id)], args=self._args(update))
        except redis.RedisError as exc:
            raise StorageUnavailable(f"task status store: {exc}") from exc

    def apply_many(self, updates: list[TaskUpdate]) -> None:
        """Apply ``updates`` in order, in one round trip (a pipeline of the script)."""
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=False)
            for update in updates:
                self.apply_in(pipe, update)
            try:
                results = pipe.execute(raise_on_error=False)
            except redis.RedisError as exc:
                raise StorageUnavailable(f"task status store: {exc}") from exc
            errors = [r for r in results if isinstance(r, Exception)]
            if not errors:
                return
            if attempt == 1 and all(isinstance(e, redis.exceptions.NoScriptError) for e in errors):
                self.load_script()  # a restarted Redis forgot it; updates are idempotent
                continue
            raise StorageUnavailable(f"task status store: {errors[0]}")

    def apply_in(self, pipe: redis.client.Pipeline, update: TaskUpdate) -> None:
        """Queue the update on ``pipe`` (a pipeline to the same Redis): it is applied in the
        caller's round trip. A plain EVALSHA: a ``Script`` on a pipeline would cost a
        ``SCRIPT EXISTS`` round trip per execute. On ``NoScriptError`` call
        :meth:`load_script` and apply again (updates are idempotent)."""
        pipe.evalsha(self._apply.sha, 1, self.key(update.task_id), *self._args(update))

    def load_script(self) -> None:
        self.client.script_load(_APPLY)

    def get(self, task_id: str) -> TaskStatus | None:
        try:
            raw: dict[bytes, bytes] = self.client.hgetall(self.key(task_id))  # type: ignore[assignment]
        except redis.RedisError as exc:
            raise StorageUnavailable(f"task status store: {exc}") from exc
        if not raw or b"status" not in raw:
            return None
        parts = [b'"task_id":' + _encode(task_id)]
        parts += [b'"' + k + b'":' + v for k, v in raw.items() if not k.startswith(b"_")]
        return _decode_status(b"{" + b",".join(parts) + b"}")
