"""Use case: search stored events, one keyset page at a time (see domain.search)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence

from analytics.domain.errors import BadQuery, NotFound
from analytics.domain.events import Event
from analytics.domain.ports import EventRepository
from analytics.domain.search import MAX_LIMIT, SearchKey, SearchPage, encode_cursor, parse_search


def search_events(
    params: Mapping[str, Sequence[str]],
    *,
    repo: EventRepository,
    secret: bytes,
    max_limit: int = MAX_LIMIT,
) -> SearchPage:
    """Validate the query parameters, read one page, and mint the cursor for the next.

    One extra row is read to know whether a next page exists, so ``next_cursor`` is None
    exactly at the end (no empty last page).
    """
    request = parse_search(params, secret=secret, max_limit=max_limit)
    rows = repo.search(request.query, after=request.after, limit=request.limit + 1)
    items = rows[: request.limit]
    next_cursor = None
    if len(rows) > request.limit:
        last = items[-1]
        next_cursor = encode_cursor(SearchKey(last.timestamp, last.event_id), request.query, secret)
    return SearchPage(items=items, count=len(items), limit=request.limit, next_cursor=next_cursor)


def find_event(event_id: str, *, repo: EventRepository) -> Event:
    """One stored event by its ``event_id``. What a client that gave up after a 503 (whose
    events Redis may have received) or a support request can ask: stored, or not (yet: a
    worker stores an accepted event within seconds of its 202)."""
    try:
        wanted = uuid.UUID(event_id)
    except ValueError:
        raise BadQuery("event_id", f"{event_id[:64]!r} is not a UUID") from None
    found = repo.get_many([wanted]).get(wanted)
    if found is None:
        raise NotFound(
            f"no stored event {wanted}: not received, or not stored yet (a worker stores an"
            " accepted event within seconds of its 202)"
        )
    return found
