"""msgspec encoders/decoders for events and for Dramatiq's message envelope, built once.

Events: one encoder/decoder pair shared by the queue payload, storage and notifications.

The envelope (:class:`MessageEncoder`): Dramatiq's default encoder is ``json.dumps``, and
an ingest message's only argument is the JSON text of up to thousands of events, so every
quote in it is escaped again by the slowest JSON encoder in the process (about 2 us per
event). msgspec writes the same JSON (a string is escaped the same way; non-ASCII stays
UTF-8 instead of ``\\uXXXX``) several times faster, and reads back whatever the default
encoder wrote: old and new processes understand each other's messages.
"""

from __future__ import annotations

from typing import Any

import dramatiq
import msgspec
from dramatiq.errors import DecodeError

from analytics.domain.events import Event

encode = msgspec.json.Encoder().encode
decode_event = msgspec.json.Decoder(Event).decode
decode_events = msgspec.json.Decoder(list[Event]).decode


class MessageEncoder(dramatiq.Encoder):
    """Dramatiq's message envelope as JSON through msgspec (drop-in for ``JSONEncoder``)."""

    def __init__(self) -> None:
        self._encode = msgspec.json.Encoder().encode
        self._decode = msgspec.json.Decoder(dict[str, Any]).decode

    def encode(self, data: dict[str, Any]) -> bytes:
        return self._encode(data)

    def decode(self, data: bytes) -> dict[str, Any]:
        try:
            return self._decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise DecodeError(f"failed to decode message {data!r}", data, exc) from None
