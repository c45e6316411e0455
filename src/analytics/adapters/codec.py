"""One msgspec encoder/decoder pair for events, built once and shared (hot path)."""

from __future__ import annotations

import msgspec

from analytics.domain.events import Event

encode = msgspec.json.Encoder().encode
decode_event = msgspec.json.Decoder(Event).decode
decode_events = msgspec.json.Decoder(list[Event]).decode
