"""One msgspec encoder/decoder pair for events, built once and shared (hot path).

Events in a Dramatiq message: ``events_arg`` puts a group's JSON array into the message
as raw JSON (``msgspec.Raw``), so the envelope encoder copies it as it is. Builds before
that embedded the array as a JSON *string*, which the envelope escaped a second time
(every quote of every event); ``events_from_arg`` reads both forms, so messages queued by
an older build (or replayed from the dead letters) still process.
"""

from __future__ import annotations

from typing import Any

import msgspec

from analytics.domain.events import Event

encode = msgspec.json.Encoder().encode
decode_event = msgspec.json.Decoder(Event).decode
decode_events = msgspec.json.Decoder(list[Event]).decode


def events_arg(events: Any) -> msgspec.Raw:
    """The events as raw JSON for a message's ``args`` (needs the msgspec envelope encoder)."""
    return msgspec.Raw(encode(events))


def events_from_arg(arg: object) -> list[Event]:
    """The events of a message argument, in whichever form it came.

    - ``list``: the current form once the envelope is decoded (a JSON array of objects);
    - ``str`` / ``bytes``: the older form, the array as JSON text;
    - ``msgspec.Raw``: the current form before the message was encoded (in-process).

    Raises ``msgspec.ValidationError`` / ``msgspec.DecodeError`` (or ``TypeError`` for any
    other type) when the argument does not hold events.
    """
    if type(arg) is list:
        return msgspec.convert(arg, list[Event])
    if isinstance(arg, str | bytes | msgspec.Raw):
        return decode_events(arg)
    raise TypeError(f"payload is {type(arg).__name__}, not a JSON array of events")
