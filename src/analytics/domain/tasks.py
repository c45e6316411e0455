"""Background task status: the record a client follows, and its monotonic transitions.

A task is one Dramatiq message (its id is the message id). Its life:
``queued -> running -> succeeded``; a failing attempt that will be retried shows
``retrying`` (with the attempt count and the last error) until the next attempt runs;
``failed`` only when no retry is left (the message is dead-lettered); ``skipped`` when a
middleware dropped the message without running it.

Hooks fire in different processes (the API enqueues, a worker runs), so their updates can
arrive out of order. Each update carries a *rank*: ``retries * 4 + phase``, and terminal
states rank above everything. A store applies an update only if its rank is at least the
stored one, so a late ``queued`` never hides ``running`` and nothing overwrites an outcome.
A dead-letter replay that sets the message option ``replays`` to n + 1 starts generation
n + 1, which ranks above every state of the previous one: the record shows the new life.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import msgspec

TaskState = Literal["queued", "running", "retrying", "succeeded", "failed", "skipped"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "skipped"})

_QUEUED, _RUNNING = 0, 1
TERMINAL_RANK = 1 << 33  # above any retries * 4 + phase
GENERATION = 1 << 34  # a replayed message starts a new life; 2**53 keeps Lua numbers exact
MAX_RESULT_BYTES = 2048
MAX_ERROR_CHARS = 1000


class TaskStatus(msgspec.Struct, kw_only=True):
    """What ``GET /api/v1/analytics/tasks/{task_id}/status`` answers."""

    task_id: str
    status: str
    actor: str | None = None
    queue: str | None = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    result: Any = None
    error: str | None = None


FIELDS = tuple(f for f in TaskStatus.__struct_fields__ if f != "task_id")


@dataclass(frozen=True, slots=True)
class TaskUpdate:
    """One transition: ``fields`` apply if ``rank`` >= the stored rank; ``first`` fields
    are set only where the record has none yet (whatever the rank)."""

    task_id: str
    rank: int
    fields: dict[str, Any]
    first: dict[str, Any] = field(default_factory=dict)


def _rank(retries: int, phase: int, generation: int = 0) -> int:
    return max(0, generation) * GENERATION + max(0, retries) * 4 + phase


def _terminal(generation: int) -> int:
    return max(0, generation) * GENERATION + TERMINAL_RANK


def queued(
    task_id: str, *, actor: str, queue: str, at: datetime, retries: int, generation: int = 0
) -> TaskUpdate:
    """The message is in the broker: first enqueue (``queued``) or a retry (``retrying``)."""
    fields: dict[str, Any] = {"status": "queued" if retries == 0 else "retrying"}
    fields["attempts"] = retries
    if retries == 0:  # a new life (first enqueue or a replay): forget a previous outcome
        fields.update(started_at=None, finished_at=None, result=None, error=None)
    if generation:
        fields["enqueued_at"] = at
    return TaskUpdate(
        task_id,
        _rank(retries, _QUEUED, generation),
        fields,
        {"actor": actor, "queue": queue, "enqueued_at": at},
    )


def running(
    task_id: str,
    *,
    actor: str,
    queue: str,
    at: datetime,
    retries: int,
    enqueued_at: datetime,
    generation: int = 0,
) -> TaskUpdate:
    """A worker started attempt ``retries + 1``.

    ``started_at`` is also a ``first`` field: a worker may write this record after the
    attempt's outcome (it is written in the background, see
    ``task_status_middleware.DeferredUpdates``); the outcome's higher rank keeps its
    status, and the start time still fills in where none is recorded.
    """
    return TaskUpdate(
        task_id,
        _rank(retries, _RUNNING, generation),
        {"status": "running", "attempts": retries + 1, "started_at": at, "finished_at": None},
        {"actor": actor, "queue": queue, "enqueued_at": enqueued_at, "started_at": at},
    )


def retrying(
    task_id: str, *, retries: int, error: BaseException | str, generation: int = 0
) -> TaskUpdate:
    """Attempt ``retries`` failed and the message was scheduled again."""
    return TaskUpdate(
        task_id,
        _rank(retries, _QUEUED, generation),
        {"status": "retrying", "attempts": retries, "error": describe_error(error)},
    )


def succeeded(
    task_id: str, *, at: datetime, attempts: int, result: object, generation: int = 0
) -> TaskUpdate:
    return TaskUpdate(
        task_id,
        _terminal(generation),
        {
            "status": "succeeded",
            "attempts": attempts,
            "finished_at": at,
            "result": summarize_result(result),
            "error": None,
        },
    )


def failed(
    task_id: str, *, at: datetime, attempts: int, error: BaseException | str, generation: int = 0
) -> TaskUpdate:
    """No retry is left: the message went to the dead-letter queue."""
    return TaskUpdate(
        task_id,
        _terminal(generation),
        {
            "status": "failed",
            "attempts": attempts,
            "finished_at": at,
            "error": describe_error(error),
        },
    )


def skipped(
    task_id: str, *, at: datetime, attempts: int, reason: str, generation: int = 0
) -> TaskUpdate:
    return TaskUpdate(
        task_id,
        _terminal(generation),
        {"status": "skipped", "attempts": attempts, "finished_at": at, "error": reason},
    )


def describe_error(error: BaseException | str) -> str:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return text[:MAX_ERROR_CHARS]


_encode = msgspec.json.Encoder().encode


def summarize_result(result: object) -> Any:
    """A small JSON-able summary: the result itself if it encodes within 2 KiB; of a larger
    mapping its short members (numbers, booleans, short strings) and the names of those
    left out. A reconcile's report with drift filled 2 KiB with its examples, and its
    counts, what the caller asked for, were left out with them (a DynamoDB drill)."""
    if result is None:
        return None
    try:
        encoded = _encode(result)
    except (TypeError, ValueError, msgspec.EncodeError):
        return {"type": type(result).__name__, "repr": repr(result)[:200]}
    if len(encoded) <= MAX_RESULT_BYTES:
        return msgspec.json.decode(encoded)
    summary: dict[str, Any] = {"type": type(result).__name__, "truncated": True, "bytes": len(encoded)}
    decoded = msgspec.json.decode(encoded)
    if isinstance(decoded, dict):
        short = {k: v for k, v in decoded.items() if k not in _SUMMARY_KEYS and (
                 v is None or isinstance(v, bool | int | float) or (isinstance(v, str) and len(v) <= 200))}  # fmt: skip
        dropped = sorted(k for k in decoded if k not in short)  # its own "type" included
        fuller = {**summary, "dropped": dropped[:20], **short}
        if len(_encode(fuller)) <= MAX_RESULT_BYTES:
            return fuller
    return summary


_SUMMARY_KEYS = frozenset({"type", "truncated", "bytes", "dropped"})


def merge(record: dict[str, Any], rank: int, update: TaskUpdate) -> tuple[dict[str, Any], int]:
    """The reference semantics of :meth:`TaskStatusStore.apply` (used by the fake)."""
    out = dict(record)
    for name, value in update.first.items():
        if out.get(name) is None:
            out[name] = value
    if update.rank >= rank:
        out.update(update.fields)
        rank = update.rank
    return out, rank
