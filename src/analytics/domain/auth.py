"""API keys and scopes: the format of a key, how it is hashed, and who may do what.

A key looks like ``ak_<id>_<secret>``: the id (12 hex digits) finds the stored record,
the secret (32 random bytes, base64url) is never stored, only ``SHA-256(salt || secret)``
with a per-key salt. Keys are high-entropy random values, so a slow KDF buys nothing
(there is no dictionary to attack); the comparison is constant-time
(:func:`hmac.compare_digest`) so timing does not reveal how much of a guess was right.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime
from typing import Literal

import msgspec

Scope = Literal["ingest", "read", "admin"]
SCOPES: tuple[Scope, ...] = ("ingest", "read", "admin")
KEY_PREFIX = "ak"
_KEY_RE = re.compile(r"ak_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})")


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """A stored key: never the secret, only its salted hash."""

    key_id: str
    name: str
    scopes: tuple[Scope, ...]
    salt: str  # hex
    secret_hash: str  # hex SHA-256(salt || secret)
    created_at: datetime
    revoked_at: datetime | None = None
    rate_per_minute: int | None = None  # None: the settings' default
    burst: int | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes


class NewKey(msgspec.Struct, frozen=True):
    """What ``create`` returns: the record and the full key, shown to the user once."""

    key: ApiKey
    secret: str


def hash_secret(salt: bytes, secret: str) -> str:
    return hashlib.sha256(salt + secret.encode()).hexdigest()


def parse_key(token: str) -> tuple[str, str] | None:
    """Split ``ak_<id>_<secret>`` into (id, secret); None when it is not of that shape."""
    m = _KEY_RE.fullmatch(token)  # not match + "$": that lets a trailing newline through
    return (m.group(1), m.group(2)) if m else None


def parse_scopes(text: str) -> tuple[Scope, ...]:
    """``"ingest,read"`` -> ("ingest", "read"); raises ValueError naming unknown scopes."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SCOPES]
    if not names or unknown:
        raise ValueError(
            f"unknown scope(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(SCOPES)}"
        )
    return tuple(s for s in SCOPES if s in names)


def generate_key(
    name: str,
    scopes: tuple[Scope, ...],
    *,
    now: datetime,
    rate_per_minute: int | None = None,
    burst: int | None = None,
) -> NewKey:
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    record = ApiKey(
        key_id=key_id,
        name=name,
        scopes=scopes,
        salt=salt.hex(),
        secret_hash=hash_secret(salt, secret),
        created_at=now,
        rate_per_minute=rate_per_minute,
        burst=burst,
    )
    return NewKey(record, f"{KEY_PREFIX}_{key_id}_{secret}")


def verify(record: ApiKey, secret: str) -> bool:
    """Constant-time check of a presented secret against the stored hash."""
    return hmac.compare_digest(hash_secret(bytes.fromhex(record.salt), secret), record.secret_hash)


def parse_static_keys(text: str) -> list[tuple[str, tuple[Scope, ...], str]]:
    """``name:scope+scope:ak_<id>_<secret>,...`` -> [(name, scopes, key)]; ValueError if bad."""
    out = []
    entry_of: dict[str, int] = {}  # key id -> entry number
    for n, entry in enumerate(e.strip() for e in text.split(",") if e.strip()):
        parts = entry.split(":")
        parsed = parse_key(parts[2]) if len(parts) == 3 else None
        if parsed is None or not parts[0]:
            raise ValueError(
                f"entry {n + 1} is not 'name:scope+scope:ak_<id>_<secret>' "
                "(make keys with `analytics keys create` or any 12-hex id and 43-char secret)"
            )
        if parsed[0] in entry_of:  # one would silently replace the other
            raise ValueError(f"entries {entry_of[parsed[0]]} and {n + 1} have the same key id")
        entry_of[parsed[0]] = n + 1
        out.append((parts[0], parse_scopes(parts[1].replace("+", ",")), parts[2]))
    return out


def static_key(name: str, scopes: tuple[Scope, ...], token: str, *, now: datetime) -> ApiKey:
    """The stored form of a key given in configuration (hashed like any other)."""
    parsed = parse_key(token)
    assert parsed is not None
    key_id, secret = parsed
    salt = secrets.token_bytes(16)
    return ApiKey(key_id=key_id, name=name, scopes=scopes, salt=salt.hex(),
                  secret_hash=hash_secret(salt, secret), created_at=now)  # fmt: skip
