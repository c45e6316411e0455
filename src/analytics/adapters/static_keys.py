"""Keys from configuration (``ANALYTICS_API_KEYS``) layered over the key store.

They are hashed at start like stored keys; they cannot be revoked through the store
(remove them from the configuration instead), and they win over a stored key with the
same id.
"""

from __future__ import annotations

from datetime import datetime

from analytics.domain.auth import ApiKey
from analytics.domain.ports import ApiKeyStore


class StaticKeysOverlay:
    def __init__(self, static: list[ApiKey], base: ApiKeyStore) -> None:
        self.static = {k.key_id: k for k in static}
        self.base = base

    def add(self, key: ApiKey) -> None:
        if key.key_id in self.static:
            raise ValueError(f"duplicate key id {key.key_id}")
        self.base.add(key)

    def get(self, key_id: str) -> ApiKey | None:
        return self.static.get(key_id) or self.base.get(key_id)

    def list(self) -> list[ApiKey]:
        return [*self.static.values(), *self.base.list()]

    def revoke(self, key_id: str, at: datetime) -> bool:
        return self.base.revoke(key_id, at)
