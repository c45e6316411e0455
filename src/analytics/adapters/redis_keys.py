"""Redis API key store: one hash ``<ns>:api_keys`` shared by every API instance.

The default when the service runs against an external Redis (``REDIS_HOST``): keys made
with ``analytics keys create`` on any host are valid on every instance at once, and a
revocation takes effect everywhere on the next request. Only salted hashes are stored.
"""

from __future__ import annotations

from datetime import datetime

import msgspec
import redis

from analytics.domain.auth import ApiKey
from analytics.domain.errors import KeyStoreUnavailable

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(ApiKey).decode

# Revoke atomically: read, check active, write back only if unchanged.
_REVOKE = """
local body = redis.call('HGET', KEYS[1], ARGV[1])
if not body then return 0 end
local key = cjson.decode(body)
if key['revoked_at'] ~= nil and key['revoked_at'] ~= cjson.null then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


class RedisApiKeyStore:
    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.key = f"{namespace}:api_keys"
        self._revoke = client.register_script(_REVOKE)

    def add(self, key: ApiKey) -> None:
        try:
            if not self.client.hsetnx(self.key, key.key_id, _encode(key)):
                raise ValueError(f"duplicate key id {key.key_id}")
        except redis.RedisError as exc:
            raise KeyStoreUnavailable(f"redis keys: {exc}") from exc

    def get(self, key_id: str) -> ApiKey | None:
        try:
            body = self.client.hget(self.key, key_id)
        except redis.RedisError as exc:
            raise KeyStoreUnavailable(f"redis keys: {exc}") from exc
        return _decode(body) if body else None

    def list(self) -> list[ApiKey]:
        try:
            bodies = self.client.hvals(self.key)
        except redis.RedisError as exc:
            raise KeyStoreUnavailable(f"redis keys: {exc}") from exc
        return sorted((_decode(b) for b in bodies), key=lambda k: (k.created_at, k.key_id))

    def revoke(self, key_id: str, at: datetime) -> bool:
        key = self.get(key_id)
        if key is None or not key.active:
            return False
        body = _encode(msgspec.structs.replace(key, revoked_at=at))
        try:
            return bool(self._revoke(keys=[self.key], args=[key_id, body]))
        except redis.RedisError as exc:
            raise KeyStoreUnavailable(f"redis keys: {exc}") from exc
