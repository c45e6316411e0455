"""The memory limit middleware: recycles once when RSS passes the limit, never below it."""

from __future__ import annotations

from analytics.adapters.memory_limit import MemoryLimit, current_rss


def test_recycles_once_when_over_the_limit() -> None:
    rss = [100, 150, 250, 300, 400]
    asked: list[str] = []
    counted: list[int] = []
    mw = MemoryLimit(
        200, recycle=lambda reason: asked.append(reason) or True, rss=lambda: rss.pop(0),
        on_recycle=counted.append,
    )  # fmt: skip
    results = [mw.check() for _ in range(4)]
    assert results == [False, False, True, False]
    assert asked == ["memory"] and counted == [250] and mw.recycles == 1


def test_off_when_zero_and_not_counted_when_recycling_is_unavailable() -> None:
    mw = MemoryLimit(0, recycle=lambda reason: True, rss=lambda: 10**12)
    assert mw.check() is False
    refused = MemoryLimit(1, recycle=lambda reason: False, rss=lambda: 10**6)
    assert refused.check() is False and refused.recycles == 0


def test_hooks_check_after_every_message() -> None:
    calls: list[str] = []
    mw = MemoryLimit(1, recycle=lambda r: calls.append(r) or True, rss=lambda: 2)
    mw.after_process_message(None, None, result=None)  # type: ignore[arg-type]
    assert calls == ["memory"]


def test_reads_this_process_rss() -> None:
    assert current_rss() > 10 * 2**20


def test_a_worker_exactly_at_its_limit_is_not_recycled() -> None:
    """Mutation QA: the limit is the most a worker may hold ("recycle a worker whose
    resident memory passes this"). At exactly the limit it keeps working; recycling there
    restarted a worker sized to its limit after every message."""
    asked: list[str] = []
    mw = MemoryLimit(256 * 2**20, recycle=lambda r: asked.append(r) or True, rss=lambda: 256 * 2**20)
    assert mw.check() is False and asked == [] and mw.recycles == 0
    assert mw.last_rss == 256 * 2**20
