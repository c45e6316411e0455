"""Read-mostly Redis calls for observability: ping, queue depths, heartbeats, scheduler run.

Key layout (every key under the service namespace, the same prefix the Dramatiq broker
uses):

| key                                  | type   | written by                               |
|--------------------------------------|--------|------------------------------------------|
| ``<ns>:<queue>.msgs``                | hash   | Dramatiq: ready + in-flight messages     |
| ``<ns>:<queue>.DQ.msgs``             | hash   | Dramatiq: delayed / retrying messages    |
| ``<ns>:<queue>.XQ``                  | zset   | Dramatiq: dead-lettered messages         |
| ``<ns>:heartbeat:<queue>``           | string | worker heartbeat middleware (JSON)       |
| ``<ns>:scheduler:last_run``          | string | the scheduler (ISO 8601 UTC or unix ts)  |

The probe uses its own client with short timeouts so that a health check or a scrape
answers quickly when Redis is slow or gone.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


@dataclass(frozen=True, slots=True)
class Heartbeat:
    queue: str
    at: float  # unix seconds
    pid: int | None
    host: str | None


def queue_key_names(queue: str) -> dict[str, str]:
    """Dramatiq's three queues behind one name: ready, delayed (.DQ), dead letters (.XQ)."""
    return {queue: f"{queue}.msgs", f"{queue}.DQ": f"{queue}.DQ.msgs", f"{queue}.XQ": f"{queue}.XQ"}


class RedisProbe:
    """Small, bounded Redis reads and the worker heartbeat write."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.ns = namespace

    @classmethod
    def from_kwargs(
        cls, kwargs: dict[str, object], namespace: str, timeout_s: float = 1.0
    ) -> RedisProbe:
        opts = {**kwargs, "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
        # One attempt: a probe reports an outage, it does not wait it out.
        client = redis.Redis(**opts, retry=Retry(NoBackoff(), 0))  # type: ignore[arg-type]
        return cls(client, namespace)

    def ping(self) -> float:
        """Round trip in milliseconds; raises ``redis.RedisError`` when Redis is unreachable."""
        started = time.perf_counter()
        self.client.ping()
        return (time.perf_counter() - started) * 1000

    def queue_depths(self, queues: Iterable[str]) -> dict[str, int]:
        """Messages per Dramatiq queue name, including ``<q>.DQ`` and ``<q>.XQ``."""
        names: list[str] = []
        pipe = self.client.pipeline(transaction=False)
        for queue in queues:
            for name, key in queue_key_names(queue).items():
                names.append(name)
                full = f"{self.ns}:{key}"
                if name.endswith(".XQ"):
                    pipe.zcard(full)
                else:
                    pipe.hlen(full)
        return {name: int(n) for name, n in zip(names, pipe.execute(), strict=True)}

    def heartbeat_key(self, queue: str) -> str:
        return f"{self.ns}:heartbeat:{queue}"

    def write_heartbeat(self, queues: Iterable[str], ttl_s: int = 86_400) -> None:
        value = json.dumps({"at": time.time(), "pid": os.getpid(), "host": socket.gethostname()})
        pipe = self.client.pipeline(transaction=False)
        for queue in queues:
            pipe.set(self.heartbeat_key(queue), value, ex=ttl_s)
        pipe.execute()

    def heartbeats(self, queues: Iterable[str]) -> dict[str, Heartbeat | None]:
        names = list(queues)
        raw = self.client.mget([self.heartbeat_key(q) for q in names]) if names else []
        out: dict[str, Heartbeat | None] = {}
        for queue, value in zip(names, raw, strict=True):
            if value is None:
                out[queue] = None
                continue
            try:
                doc = json.loads(value)
                out[queue] = Heartbeat(queue, float(doc["at"]), doc.get("pid"), doc.get("host"))
            except (ValueError, KeyError, TypeError):
                out[queue] = None
        return out

    @property
    def scheduler_key(self) -> str:
        return f"{self.ns}:scheduler:last_run"

    def scheduler_leader(self) -> str | None:
        """Owner of the scheduler's leader lease (``<ns>:scheduler:leader``), if any."""
        value = self.client.get(f"{self.ns}:scheduler:leader")
        if value is None:
            return None
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value)

    @property
    def scheduler_seen_key(self) -> str:
        return f"{self.ns}:scheduler:leader_seen"

    def record_scheduler_seen(self, at: float | None = None) -> None:
        """For the active scheduler, at each lease renewal: when a leader was last seen."""
        self.client.set(self.scheduler_seen_key, repr(time.time() if at is None else at), ex=86_400)

    def scheduler_seen(self) -> float | None:
        """Unix seconds of the last lease renewal by a leader, or None (none for a day)."""
        value = self.client.get(self.scheduler_seen_key)
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None

    def record_scheduler_run(self, at: datetime) -> None:
        """For the scheduler: note a completed run (ISO 8601 UTC), read by /health/detailed."""
        self.client.set(self.scheduler_key, at.astimezone(UTC).isoformat())

    def scheduler_last_run(self) -> float | None:
        """Unix seconds of the scheduler's last run, or None when it never ran.

        Accepts an ISO 8601 timestamp, unix seconds, or a JSON object with ``at``.
        """
        value = self.client.get(self.scheduler_key)
        if value is None:
            return None
        return parse_instant(value.decode() if isinstance(value, bytes) else str(value))


def parse_instant(text: str) -> float | None:
    text = text.strip()
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            return None
        for key in ("at", "last_run", "ts", "timestamp", "finished_at", "started_at"):
            if key in doc:
                return parse_instant(str(doc[key]))
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()
