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
)
from analytics.application.queries import check_params
from analytics.domain.errors import BadQuery, FieldError, MalformedInput, ValidationFailed
from analytics.domain.ports import DeadLetters
from analytics.domain.validation import JSON_DECODE_ERRORS
from analytics.entrypoints.api.body import read_json_body

encode = msgspec.json.Encoder().encode
JSON = "application/json"
QUEUE_NAMES = ("high_priority", "aggregations", "notifications", "maintenance")


class SelectionBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Which dead letters: ``ids``, or ``queue`` and/or ``actor``, or ``all``."""

    ids: list[str] = msgspec.field(default_factory=list)
    queue: str | None = None
    actor: str | None = None
    all: bool = False


_decode_selection = msgspec.json.Decoder(SelectionBody).decode


def _selection_errors(exc: msgspec.ValidationError) -> list[FieldError]:
    """msgspec's message as a field error: ``... - at `$.ids``` names the field, an unknown
    one is named in the message itself."""
    text = str(exc)
    message, _, path = text.partition(" - at `$")
    field = path.rstrip("`").lstrip(".").split("[")[0].split(".")[0] or "$"
    if message.startswith("Object contains unknown field `"):
        name = message.removeprefix("Object contains unknown field `").rstrip("`")
        return [FieldError(name, "unknown_field", "unknown field; allowed: ids, queue, actor, all")]
    return [FieldError(field, "invalid", message)]


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
        resp.data = encode({
            "count": len(listing.letters),
            "groups": [
                {"queue": q, "actor": a, "error_type": e, "count": n} for q, a, e, n in listing.groups
            ],
            "items": [d.summary() for d in listing.letters],
        })  # fmt: skip


class DeadLetterResource:
    def __init__(self, dlq: DeadLetters) -> None:
        self.dlq = dlq

    def on_get(self, req: falcon.Request, resp: falcon.Response, letter_id: str) -> None:
        check_params(req.params, ())
        resp.content_type = JSON
        resp.data = encode(find_dead_letter(letter_id, dlq=self.dlq).detail())


class DeadLetterActionResource:
    """``POST .../replay`` and ``POST .../purge`` with a selection body."""

    def __init__(self, dlq: DeadLetters, action: str, max_body_bytes: int) -> None:
        self.dlq = dlq
        self.action = action
        self.max_body_bytes = max_body_bytes

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        check_params(req.params, ())  # the selection is the body; a parameter is a mistake
        raw = read_json_body(req, self.max_body_bytes)
        try:
            body = _decode_selection(raw or b"{}")
        except msgspec.ValidationError as exc:
            raise ValidationFailed(_selection_errors(exc)) from None
        except JSON_DECODE_ERRORS as exc:
            raise MalformedInput(f"body is not JSON: {exc}") from None
        if body.queue is not None and body.queue not in QUEUE_NAMES:
            raise ValidationFailed([FieldError(
                "queue", "invalid", f"unknown queue {body.queue!r}; choose from {', '.join(QUEUE_NAMES)}"
            )])  # fmt: skip
        if not (body.ids or body.queue or body.actor or body.all):  # never "everything"
            raise ValidationFailed([FieldError(
                "$", "selection_required", "give ids, a queue and/or actor, or all: true"
            )])  # fmt: skip
        selection = Selection(ids=tuple(body.ids), queue=body.queue, actor=body.actor, all=body.all)
        answer: dict[str, object] = {"action": self.action}
        if self.action == "replay":
            replay = replay_selection(selection, dlq=self.dlq)
            done, answer["skipped"] = replay.replayed, replay.skipped
        else:
            done = purge_dead_letters(selection, dlq=self.dlq)
        answer |= {"count": len(done), "ids": done}
        resp.content_type = JSON
        resp.data = encode(answer)


def add_admin_routes(app: falcon.App, dlq: DeadLetters, max_body_bytes: int) -> None:
    app.add_route("/api/v1/admin/dlq", DeadLettersResource(dlq))
    app.add_route(
        "/api/v1/admin/dlq/replay", DeadLetterActionResource(dlq, "replay", max_body_bytes)
    )
    app.add_route("/api/v1/admin/dlq/purge", DeadLetterActionResource(dlq, "purge", max_body_bytes))
    app.add_route("/api/v1/admin/dlq/{letter_id}", DeadLetterResource(dlq))
