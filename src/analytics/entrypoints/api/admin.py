"""Admin resources under ``/api/v1/admin/dlq``: the dead-letter use cases over HTTP.

The security layer puts the ``admin`` scope on every route under ``/api/v1/admin``.
"""

from __future__ import annotations

import falcon
import msgspec

from analytics.application.dead_letters import (
    Selection,
    find_dead_letter,
    list_dead_letters,
    purge_dead_letters,
    replay_selection,
    selection_conflict,
)
from analytics.application.queries import check_params
from analytics.domain.errors import BadQuery, FieldError, MalformedInput, ValidationFailed
from analytics.domain.ports import DeadLetters
from analytics.domain.validation import JSON_DECODE_ERRORS, lone_surrogates_replaced
from analytics.entrypoints.api.body import read_json_body

encode = msgspec.json.Encoder().encode
JSON = "application/json"
QUEUE_NAMES = ("high_priority", "aggregations", "notifications", "maintenance")


class DeadLetterSummaryOut(msgspec.Struct, kw_only=True):
    """One dead letter in a listing (``DeadLetter.summary``)."""

    id: str
    queue: str
    actor: str
    failed_at: str
    attempts: int
    error_type: str
    error: str
    permanent: bool
    replays: int


class DeadLetterOut(DeadLetterSummaryOut, kw_only=True):
    """One dead letter in detail (``DeadLetter.detail``)."""

    traceback: str
    args_preview: str
    correlation_ids: list[str]


class DeadLetterGroupOut(msgspec.Struct, kw_only=True):
    queue: str
    actor: str
    error_type: str
    count: int


class DeadLetterListOut(msgspec.Struct, kw_only=True):
    """``GET /api/v1/admin/dlq``: every letter, and the counts by queue, actor, error."""

    count: int
    groups: list[DeadLetterGroupOut]
    items: list[DeadLetterSummaryOut]


class SelectionDoneOut(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a replay or purge did: the letters it took (``ids``), and for a replay the
    selected letters it could not replay (``skipped``: envelopes that do not decode)."""

    action: str
    count: int
    ids: list[str]
    skipped: list[str] | None = None


class SelectionBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Which dead letters: ``ids``, or ``queue`` and/or ``actor``, or ``all``."""

    ids: list[str] = msgspec.field(default_factory=list)
    queue: str | None = None
    actor: str | None = None
    all: bool = False


_decode_selection = msgspec.json.Decoder(SelectionBody).decode


def _selection(raw: bytes) -> SelectionBody:
    """The selection body; a lone UTF-16 surrogate escape becomes U+FFFD, as on the ingest
    routes (README "Errors"; QA: here it was a 400 "not JSON")."""
    try:
        return _decode_selection(raw)
    except msgspec.ValidationError as exc:
        return _selection_last_wins(raw, exc)
    except JSON_DECODE_ERRORS as exc:
        fixed = lone_surrogates_replaced(raw)
        if fixed is None:
            raise MalformedInput(f"body is not JSON: {exc}") from None
        return _selection(fixed)


def _selection_last_wins(raw: bytes, exc: msgspec.ValidationError) -> SelectionBody:
    """The body when only an earlier occurrence of a member given twice failed (the last
    one counts, as for events); else ValidationFailed with every way it fails."""
    try:  # the typed decode may have stopped before a syntax error further on
        doc = msgspec.json.decode(raw)
    except (*JSON_DECODE_ERRORS, RecursionError) as bad:
        raise MalformedInput(f"body is not JSON: {bad}") from None
    try:
        return msgspec.convert(doc, SelectionBody)
    except msgspec.ValidationError:
        raise ValidationFailed(_selection_errors(doc, exc)) from None


def _selection_errors(doc: object, exc: msgspec.ValidationError) -> list[FieldError]:
    """Every way a selection body fails, not only the first msgspec met: each member is
    checked on its own (an unknown one named as such, a queue name against the queues)."""
    if not isinstance(doc, dict):
        return [_field_error(exc)]
    errors: list[FieldError] = []
    for name, value in doc.items():
        if name not in _SELECTION_FIELDS:
            errors.append(FieldError(name, "unknown_field", "unknown field; allowed: ids, queue, actor, all"))
            continue
        try:
            msgspec.convert({name: value}, SelectionBody)
        except msgspec.ValidationError as one:
            errors.append(_field_error(one))
        else:
            if name == "queue" and (bad := _unknown_queue(value)) is not None:
                errors.append(bad)
    return errors or [_field_error(exc)]


def _field_error(exc: msgspec.ValidationError) -> FieldError:
    """msgspec's message as a field error: ``... - at `$.ids``` names the field."""
    message, _, path = str(exc).partition(" - at `$")
    field = path.rstrip("`").lstrip(".").split("[")[0].split(".")[0] or "$"
    return FieldError(field, "invalid", message)


def _unknown_queue(queue: str | None) -> FieldError | None:
    if queue is None or queue in QUEUE_NAMES:
        return None
    return FieldError("queue", "invalid", f"unknown queue {queue!r}; choose from {', '.join(QUEUE_NAMES)}")


_SELECTION_FIELDS = frozenset(SelectionBody.__struct_fields__)


def _queue_param(req: falcon.Request) -> str | None:
    check_params(req.params, ("queue", "actor"))
    queue = req.get_param("queue")
    if queue is not None and queue not in QUEUE_NAMES:
        raise BadQuery("queue", f"unknown queue {queue!r}; choose from {', '.join(QUEUE_NAMES)}")
    return queue


class DeadLettersResource:
    def __init__(self, dlq: DeadLetters) -> None:
        self.dlq = dlq

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        listing = list_dead_letters(
            dlq=self.dlq, queue=_queue_param(req), actor=req.get_param("actor")
        )
        resp.content_type = JSON
        resp.data = encode(DeadLetterListOut(
            count=len(listing.letters),
            groups=[DeadLetterGroupOut(queue=q, actor=a, error_type=e, count=n)
                    for q, a, e, n in listing.groups],
            items=[DeadLetterSummaryOut(**d.summary()) for d in listing.letters],
        ))  # fmt: skip


class DeadLetterResource:
    def __init__(self, dlq: DeadLetters) -> None:
        self.dlq = dlq

    def on_get(self, req: falcon.Request, resp: falcon.Response, letter_id: str) -> None:
        check_params(req.params, ())
        resp.content_type = JSON
        resp.data = encode(DeadLetterOut(**find_dead_letter(letter_id, dlq=self.dlq).detail()))


class DeadLetterActionResource:
    """``POST .../replay`` and ``POST .../purge`` with a selection body."""

    def __init__(self, dlq: DeadLetters, action: str, max_body_bytes: int) -> None:
        self.dlq = dlq
        self.action = action
        self.max_body_bytes = max_body_bytes

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        check_params(req.params, ())  # the selection is the body; a parameter is a mistake
        body = _selection(read_json_body(req, self.max_body_bytes) or b"{}")
        if (bad := _unknown_queue(body.queue)) is not None:
            raise ValidationFailed([bad])
        if not (body.ids or body.queue or body.actor or body.all):  # never "everything"
            raise ValidationFailed([FieldError(
                "$", "selection_required", "give ids, a queue and/or actor, or all: true"
            )])  # fmt: skip
        selection = Selection(ids=tuple(body.ids), queue=body.queue, actor=body.actor, all=body.all)
        conflict = selection_conflict(selection)
        if conflict:
            raise ValidationFailed([FieldError("$", "selection_conflict", conflict)])
        skipped = None
        if self.action == "replay":
            replay = replay_selection(selection, dlq=self.dlq)
            done, skipped = list(replay.replayed), list(replay.skipped)
        else:
            done = list(purge_dead_letters(selection, dlq=self.dlq))
        resp.content_type = JSON
        resp.data = encode(
            SelectionDoneOut(action=self.action, count=len(done), ids=done, skipped=skipped)
        )


def add_admin_routes(app: falcon.App, dlq: DeadLetters, max_body_bytes: int) -> None:
    app.add_route("/api/v1/admin/dlq", DeadLettersResource(dlq))
    app.add_route(
        "/api/v1/admin/dlq/replay", DeadLetterActionResource(dlq, "replay", max_body_bytes)
    )
    app.add_route("/api/v1/admin/dlq/purge", DeadLetterActionResource(dlq, "purge", max_body_bytes))
    app.add_route("/api/v1/admin/dlq/{letter_id}", DeadLetterResource(dlq))
