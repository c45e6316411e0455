"""Use cases over the dead-letter queues: list, show, replay, purge, measure.

A replay puts the original message back on its queue with a fresh retry budget. It is
exactly once in effect because every actor is idempotent (events are stored once per
``event_id``): replaying a message whose events were partly stored before it failed
stores only the missing ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from analytics.domain.errors import BadQuery, DeadLetterNotFound
from analytics.domain.operations import DeadLetter
from analytics.domain.ports import DeadLetters

MIN_PREFIX = 6


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters an operation applies to: ids, or a filter, or all of them."""

    ids: tuple[str, ...] = ()
    queue: str | None = None
    actor: str | None = None
    all: bool = False


@dataclass(frozen=True, slots=True)
class Listing:
    letters: list[DeadLetter]
    # "how often": count per (queue, actor, error type)
    groups: list[tuple[str, str, str, int]] = field(default_factory=list)


def list_dead_letters(
    *, dlq: DeadLetters, queue: str | None = None, actor: str | None = None
) -> Listing:
    letters = dlq.list(queue=queue, actor=actor)
    counts = Counter((d.queue, d.actor, d.error_type) for d in letters)
    groups = sorted(((q, a, e, n) for (q, a, e), n in counts.items()), key=lambda g: -g[3])
    return Listing(letters=letters, groups=groups)


def find_dead_letter(letter_id: str, *, dlq: DeadLetters) -> DeadLetter:
    """By full id or by a unique prefix of at least six characters."""
    letters = dlq.list()
    exact = [d for d in letters if d.letter_id == letter_id]
    if exact:
        return exact[0]
    if len(letter_id) >= MIN_PREFIX:
        matches = [d for d in letters if d.letter_id.startswith(letter_id)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise BadQuery("id", f"{letter_id!r} matches {len(matches)} dead letters; give more")
    short = f" (a prefix needs {MIN_PREFIX} characters or more)" if len(letter_id) < MIN_PREFIX else ""
    raise DeadLetterNotFound(f"no dead letter with id {letter_id!r}{short}")


def selection_conflict(selection: Selection) -> str | None:
    """Why a selection mixes its kinds, if it does. Ids with a filter, or ``all`` with one,
    resolved to the ids (or the filter) and ignored the rest: a purge by ids "in queue X"
    purged the ids wherever they were (QA)."""
    if selection.ids and (selection.queue or selection.actor or selection.all):
        return "ids select by id: give them without a queue, actor or all"
    if selection.all and (selection.queue or selection.actor):
        return "all means every dead letter: give it without a queue or actor"
    return None


def select(selection: Selection, *, dlq: DeadLetters) -> list[DeadLetter]:
    """Resolve a selection; refuse an empty one rather than guess "everything", and one
    that mixes ids, a filter and ``all``."""
    conflict = selection_conflict(selection)
    if conflict:
        raise BadQuery("selection", conflict)
    if selection.ids:
        return [find_dead_letter(i, dlq=dlq) for i in dict.fromkeys(selection.ids)]
    if selection.queue or selection.actor:
        return dlq.list(queue=selection.queue, actor=selection.actor)
    if selection.all:
        return dlq.list()
    raise BadQuery("selection", "give message ids, a queue and/or actor filter, or all")


@dataclass(frozen=True, slots=True)
class Replay:
    """What a replay did: the letters it requeued, and those it left (an envelope that
    does not decode has nothing to run: it can only be inspected and purged)."""

    replayed: list[str]
    skipped: list[str]


def replay_selection(selection: Selection, *, dlq: DeadLetters) -> Replay:
    letters = select(selection, dlq=dlq)
    done = dlq.replay([d.letter_id for d in letters]) if letters else []
    return Replay(done, [d.letter_id for d in letters if d.letter_id not in done])


def replay_dead_letters(selection: Selection, *, dlq: DeadLetters) -> list[str]:
    return replay_selection(selection, dlq=dlq).replayed


def purge_dead_letters(selection: Selection, *, dlq: DeadLetters) -> list[str]:
    letters = select(selection, dlq=dlq)
    return dlq.purge([d.letter_id for d in letters]) if letters else []


def measure_dead_letters(*, dlq: DeadLetters, now: datetime) -> dict[str, int]:
    """The dead-letter depth check: measure and keep the depths for the metric."""
    depths = dlq.depths()
    dlq.record_depths(depths, now)
    return depths


def by_ids(letters: Sequence[DeadLetter]) -> dict[str, DeadLetter]:
    return {d.letter_id: d for d in letters}
