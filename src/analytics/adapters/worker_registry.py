"""Dramatiq middleware: each worker process records the actors it declares, in Redis.

The scheduler enqueues by actor name without importing the actors. Before it enqueues a
job's actor it checks ``<ns>:ops:actors``, so a job whose actor no worker has ever
declared (a module not deployed yet) is skipped with a warning instead of filling the
dead letters; its periods stay owed and are caught up once a worker declares it.
"""

from __future__ import annotations

from typing import Any

import dramatiq
import structlog

log = structlog.get_logger("analytics.worker")


def actors_key(namespace: str) -> str:
    return f"{namespace}:ops:actors"


class ActorRegistry(dramatiq.Middleware):
    def __init__(self, client: Any, namespace: str) -> None:
        self.client = client
        self.key = actors_key(namespace)

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        names = sorted(broker.actors)
        if self.client is None or not names:
            return
        try:
            self.client.sadd(self.key, *names)
        except Exception:  # noqa: BLE001 - the registry must never stop a worker
            log.warning("actor registry not updated", actors=names)
