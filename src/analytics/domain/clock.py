"""Standard-library effects behind tiny injectable objects (no monkey-patching in tests)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from analytics.domain import ids


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock for tests: returns ``at`` and moves only when told to."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def advance(self, delta: timedelta) -> None:
        self.at += delta


def uuid4() -> uuid.UUID:
    """A new random event id (``ids.uuid4``: ``uuid.uuid4()`` without a kernel call each)."""
    return ids.uuid4()
