"""API key use cases: create, list, revoke, authenticate, and the embedded default's dev key."""

from __future__ import annotations

from datetime import UTC, datetime

from analytics.domain.auth import SCOPES, ApiKey, NewKey, Scope, generate_key, parse_key, verify
from analytics.domain.errors import Forbidden, NotFound, Unauthenticated
from analytics.domain.ports import ApiKeyStore, Clock

DEV_KEY_NAME = "development"


def create_key(
    name: str,
    scopes: tuple[Scope, ...],
    *,
    store: ApiKeyStore,
    clock: Clock,
    rate_per_minute: int | None = None,
    burst: int | None = None,
) -> NewKey:
    """Make a key and store only its hash; the caller shows ``secret`` to the user once."""
    new = generate_key(name, scopes, now=clock.now(), rate_per_minute=rate_per_minute, burst=burst)
    store.add(new.key)
    return new


def revoke_key(key_id: str, *, store: ApiKeyStore, clock: Clock) -> None:
    if not store.revoke(key_id, clock.now()):
        raise NotFound(f"no active key with id {key_id!r}")


def authenticate(token: str | None, *, store: ApiKeyStore) -> ApiKey:
    """The active key that ``token`` is, or Unauthenticated (same message for every cause)."""
    parsed = parse_key(token) if token else None
    if parsed is None:
        raise Unauthenticated("missing or malformed API key" if not token else "invalid API key")
    key_id, secret = parsed
    record = store.get(key_id)
    # Verify even when the id is unknown so timing does not tell known ids from unknown.
    ok = verify(record or _DUMMY, secret)
    if record is None or not ok or not record.active:
        raise Unauthenticated("invalid API key")
    return record


def authorize(key: ApiKey, scope: Scope) -> None:
    if not key.allows(scope):
        raise Forbidden(scope)


def ensure_dev_key(*, store: ApiKeyStore, clock: Clock) -> NewKey | None:
    """On the very first start (no key ever made) create a key with every scope.

    Revoked keys stay in the store, so a revoked development key is not re-created.
    """
    if store.list():
        return None
    return create_key(DEV_KEY_NAME, SCOPES, store=store, clock=clock)


_DUMMY = generate_key("dummy", (), now=datetime(2000, 1, 1, tzinfo=UTC)).key
