"""SQLite API key store: the embedded default's keys, in ``<data_dir>/keys.sqlite3``.

Only salted hashes are stored. The file is created readable by its owner only.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from datetime import datetime
from pathlib import Path

import msgspec

from analytics.adapters.sqlite_store import use_wal
from analytics.domain.auth import ApiKey
from analytics.domain.errors import KeyStoreUnavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id     TEXT PRIMARY KEY,
    created_us INTEGER NOT NULL,
    body       BLOB NOT NULL
);
"""
_encode = msgspec.json.Encoder().encode
_BUSY_TIMEOUT_S = 30.0  # SQLite's lock wait, and the WAL switch's
_decode = msgspec.json.Decoder(ApiKey).decode


class SQLiteApiKeyStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        self._local = threading.local()
        with self._conn() as conn:
            conn.executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, check_same_thread=False)
            use_wal(conn, _BUSY_TIMEOUT_S)
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def add(self, key: ApiKey) -> None:
        try:
            with self._conn() as conn:
                conn.execute(
                    "INSERT INTO api_keys (key_id, created_us, body) VALUES (?, ?, ?)",
                    (key.key_id, int(key.created_at.timestamp() * 1e6), _encode(key)),
                )
        except sqlite3.OperationalError as exc:
            raise KeyStoreUnavailable(f"sqlite keys: {exc}") from exc

    def get(self, key_id: str) -> ApiKey | None:
        try:
            row = (
                self._conn()
                .execute("SELECT body FROM api_keys WHERE key_id = ?", (key_id,))
                .fetchone()
            )
        except sqlite3.OperationalError as exc:
            raise KeyStoreUnavailable(f"sqlite keys: {exc}") from exc
        return _decode(row[0]) if row else None

    def list(self) -> list[ApiKey]:
        try:  # translated as add and get are (review: list and revoke let it through)
            rows = self._conn().execute("SELECT body FROM api_keys ORDER BY created_us, key_id")
            return [_decode(body) for (body,) in rows]
        except sqlite3.OperationalError as exc:
            raise KeyStoreUnavailable(f"sqlite keys: {exc}") from exc

    def revoke(self, key_id: str, at: datetime) -> bool:
        try:
            with self._conn() as conn:
                row = conn.execute("SELECT body FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
                if row is None:
                    return False
                key = _decode(row[0])
                if not key.active:
                    return False
                conn.execute(
                    "UPDATE api_keys SET body = ? WHERE key_id = ?",
                    (_encode(msgspec.structs.replace(key, revoked_at=at)), key_id),
                )
        except sqlite3.OperationalError as exc:
            raise KeyStoreUnavailable(f"sqlite keys: {exc}") from exc
        return True
