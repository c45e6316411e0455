"""Operations records: what the dead-letter queue holds, as plain values.

Framework-free on purpose: the application and the HTTP/CLI entrypoints see a
``DeadLetter``, never a Dramatiq message or a Redis key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message that failed for good: which task, where, why and how often."""

    letter_id: str  # the Dramatiq message id (stable across retries and replays)
    queue: str
    actor: str
    failed_at: datetime
    attempts: int  # runs before it was dead-lettered (retries + 1)
    error_type: str
    error: str
    permanent: bool  # True: a PermanentError skipped the retries
    traceback: str = ""
    replays: int = 0  # how often an operator replayed it before
    args_preview: str = ""
    correlation_ids: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.letter_id,
            "queue": self.queue,
            "actor": self.actor,
            "failed_at": self.failed_at.isoformat(),
            "attempts": self.attempts,
            "error_type": self.error_type,
            "error": self.error,
            "permanent": self.permanent,
            "replays": self.replays,
        }

    def detail(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "traceback": self.traceback,
            "args_preview": self.args_preview,
            "correlation_ids": list(self.correlation_ids),
        }
