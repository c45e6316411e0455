"""Ingest use cases: validate events and hand them to background processing.

202 means "durably queued": these functions return only after the task queue said so.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import msgspec

from analytics.domain.errors import FieldError, MalformedInput, ValidationFailed
from analytics.domain.events import (
    BatchIn,
    BatchItemResult,
    BatchReceipt,
    Event,
    EventIn,
    LegacyEventIn,
    Receipt,
)
from analytics.domain.ports import Clock, IdGenerator, TaskQueue
from analytics.domain.validation import (
    DEFAULT_LIMITS,
    JSON_DECODE_ERRORS,
    TOO_DEEP,
    EventBuilder,
    Limits,
    PatternFree,
    build_event,
    computed_fields,
    decode_event,
    lone_surrogates_replaced,
    may_hide_sloppy_price,
    sloppy_price,
)

_batch_decoder = msgspec.json.Decoder(BatchIn)


@dataclass(frozen=True, slots=True)
class IngestDeps:
    """The ports ingest needs, bundled once per process by the composition root."""

    queue: TaskQueue
    clock: Clock
    new_id: IdGenerator
    limits: Limits = DEFAULT_LIMITS


def accept_event(
    raw: bytes, *, correlation_id: str, deps: IngestDeps, legacy: bool = False
) -> Receipt:
    """Validate one event body and queue it. Raises MalformedInput / ValidationFailed."""
    event = validate_event(raw, correlation_id=correlation_id, deps=deps, legacy=legacy)
    return queue_event(event, deps=deps)


def validate_event(
    raw: bytes, *, correlation_id: str, deps: IngestDeps, legacy: bool = False
) -> Event:
    """The event one body stands for, nothing queued yet (no side effect at all).
    Raises MalformedInput / ValidationFailed."""
    received_at = deps.clock.now()
    model = LegacyEventIn if legacy else EventIn
    ein = decode_event(raw, model, received_at=received_at, limits=deps.limits)
    return build_event(
        ein,
        received_at=received_at,
        correlation_id=correlation_id,
        new_id=deps.new_id,
        limits=deps.limits,
    )


def queue_event(event: Event, *, deps: IngestDeps) -> Receipt:
    """Queue one validated event; the receipt once the queue holds it durably."""
    task_id = deps.queue.enqueue_events((event,))
    return Receipt(
        status="accepted",
        event_id=event.event_id,
        correlation_id=event.correlation_id,
        background_task_id=task_id,
        computed_fields=computed_fields(event),
    )


def accept_batch(
    raw: bytes,
    *,
    correlation_id: str,
    deps: IngestDeps,
    max_events: int,
    admit: Callable[[int], None] | None = None,
) -> BatchReceipt:
    """Validate every event of a batch on its own; queue the valid ones together.

    ``admit(n)`` is called with the event count before any work is queued (the API's
    rate limiter: it raises to refuse). A rejected event never costs the accepted ones;
    an ``event_id`` repeated inside the batch is reported as ``duplicate`` and queued once.
    """
    received_at = deps.clock.now()
    items = _decode_batch(raw, max_events, received_at=received_at, limits=deps.limits)
    if admit is not None:
        admit(len(items))  # rate limits count events, not requests
    build = EventBuilder(
        received_at=received_at,
        correlation_id=correlation_id,
        new_id=deps.new_id,
        limits=deps.limits,
    )
    decoded = [item for item in items if not isinstance(item, ValidationFailed)]
    built = build.many(decoded)  # in the order of ``decoded``
    if len(decoded) == len(items) and not any(map(isinstance, built, _FAILED)):
        # Every event valid (the common case): only repeated ids can keep one out.
        event_ids = list(map(_get_event_id, built))
        if len(set(map(_get_int, event_ids))) == len(event_ids):  # no id repeated
            accepted: list[Event] = built  # type: ignore[assignment]
            results = list(map(BatchItemResult, range(len(built)), _ACCEPTED, event_ids))
            return _receipt(deps, correlation_id, accepted, 0, 0, results)
    outcomes = iter(built)
    results = []
    accepted = []
    seen: set[int] = set()  # event_id.int: UUID.__hash__ is Python code, int's is not
    duplicates = rejected = 0
    for index, item in enumerate(items):
        outcome = item if isinstance(item, ValidationFailed) else next(outcomes)
        if isinstance(outcome, ValidationFailed):
            rejected += 1
            errors = tuple(e.as_dict() for e in outcome.errors)
            results.append(BatchItemResult(index, "rejected", errors=errors))
            continue
        event_id = outcome.event_id
        key = event_id.int
        if key in seen:
            duplicates += 1
            results.append(BatchItemResult(index, "duplicate", event_id))
            continue
        seen.add(key)
        accepted.append(outcome)
        results.append(BatchItemResult(index, "accepted", event_id))
    return _receipt(deps, correlation_id, accepted, duplicates, rejected, results)


def _receipt(
    deps: IngestDeps,
    correlation_id: str,
    accepted: list[Event],
    duplicates: int,
    rejected: int,
    results: list[BatchItemResult],
) -> BatchReceipt:
    """Queue the accepted events (202 waits for this) and say what became of each."""
    task_id = deps.queue.enqueue_events(accepted) if accepted else None
    return BatchReceipt(
        correlation_id=correlation_id,
        background_task_id=task_id,
        accepted=len(accepted),
        duplicates=duplicates,
        rejected=rejected,
        results=results,
    )


def _decode_batch(
    raw: bytes, max_events: int, *, received_at: datetime, limits: Limits
) -> list[EventIn | ValidationFailed]:
    """One decode for the whole batch when every event is well-typed (the common case);
    otherwise each event on its own, so one bad event costs only itself.

    The one decode leaves the identifier patterns out (see ``PatternFree``): an event that
    fails one is decoded again on its own, with every rule, for its error list.
    """
    try:
        fast = _fast_batch_decoder.decode(raw)
    except JSON_DECODE_ERRORS:
        pass  # malformed or some event ill-typed: the slow path below says which
    except RecursionError:
        raise MalformedInput(TOO_DEEP) from None
    else:
        _check_count(len(fast.events), max_events)
        items: list[EventIn | ValidationFailed] = fast.events
        failing = _patterns_match.failing(items)
        raws = None
        prices = list(map(_get_price, items))  # (not a set: hashing a Decimal is ~750 ns)
        if prices.count(None) < len(prices) and may_hide_sloppy_price(raw):  # a sloppy one? whose?
            raws = _batch_decoder.decode(raw).events  # same JSON: cannot fail now
            sloppy = (i for i, e in enumerate(items) if e.price is not None and sloppy_price(raws[i]))
            failing = sorted(set(failing).union(sloppy))
        if failing:
            raws = raws or _batch_decoder.decode(raw).events
            for index in failing:
                items[index] = _decode_one(raws[index], received_at, limits)
        return items
    try:
        batch = _batch_decoder.decode(raw)
    except msgspec.ValidationError:
        try:  # the body as any JSON, for every way its wrapper fails
            doc = msgspec.json.decode(raw)
        except JSON_DECODE_ERRORS as exc:  # e.g. trailing bytes after a wrongly typed value
            raise MalformedInput(f"body is not valid JSON: {exc}") from None
        except RecursionError:
            raise MalformedInput(TOO_DEEP) from None
        raise ValidationFailed(_wrapper_errors(doc)) from None
    except JSON_DECODE_ERRORS as exc:
        fixed = lone_surrogates_replaced(raw)
        if fixed is not None:  # one event's lone surrogate must not cost the whole batch
            return _decode_batch(fixed, max_events, received_at=received_at, limits=limits)
        raise MalformedInput(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise MalformedInput(TOO_DEEP) from None
    _check_count(len(batch.events), max_events)
    return [_decode_one(item, received_at, limits) for item in batch.events]


def _wrapper_errors(doc: object) -> list[FieldError]:
    """Every way a batch body (valid JSON) fails ``{"events": [...]}``, at once."""
    if not isinstance(doc, dict):
        kinds = {list: "an array", str: "a string", int: "a number", float: "a number",
                 bool: "a boolean"}  # fmt: skip
        kind = kinds.get(type(doc), "null")
        return [FieldError("$", "type", f'a batch is a JSON object {{"events": [...]}}, not {kind}')]
    errors = [FieldError(name, "unknown_field", 'unknown field; a batch has only "events"')
              for name in doc if name != "events"]  # fmt: skip
    if "events" not in doc:
        errors.insert(0, FieldError("events", "required", "field is required"))
    elif not isinstance(doc["events"], list):
        errors.insert(0, FieldError("events", "type", "must be an array of event objects"))
    return errors


def _decode_one(
    item: msgspec.Raw, received_at: datetime, limits: Limits
) -> EventIn | ValidationFailed:
    try:
        return decode_event(item, EventIn, received_at=received_at, limits=limits)  # type: ignore[arg-type,return-value]
    except ValidationFailed as exc:
        return exc
    except MalformedInput as exc:
        return ValidationFailed([FieldError("$", "json", str(exc))])


def _check_count(count: int, max_events: int) -> None:
    if count == 0:
        raise ValidationFailed([FieldError("events", "min_items", "at least one event")])
    if count > max_events:
        raise BatchTooLarge(count, max_events)


_FAILED = itertools.repeat(ValidationFailed)
_ACCEPTED = itertools.repeat("accepted")
_get_event_id = operator.attrgetter("event_id")
_get_price = operator.attrgetter("price")
_get_int = operator.attrgetter("int")
_patterns_match = PatternFree(EventIn)
_FastBatch = msgspec.defstruct(
    "_FastBatch", [("events", list[_patterns_match.model])], forbid_unknown_fields=True
)
_fast_batch_decoder = msgspec.json.Decoder(_FastBatch)


class BatchTooLarge(ValidationFailed):
    """More events in one batch than the documented maximum (answered with 413)."""

    def __init__(self, count: int, limit: int) -> None:
        self.count, self.limit = count, limit
        super().__init__(
            [FieldError("events", "max_items", f"{count} events; at most {limit} per batch")]
        )
