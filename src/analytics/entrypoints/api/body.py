"""Reading request bodies within limits: content type (415) and size (413)."""

from __future__ import annotations

import falcon

from analytics.entrypoints.api.problems import Problem


def read_json_body(req: falcon.Request, max_bytes: int) -> bytes:
    ctype = (req.content_type or "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise Problem(
            415,
            slug="unsupported-media-type",
            title="Unsupported media type",
            detail=f"send Content-Type: application/json (got {req.content_type or 'none'})",
        )
    length = req.content_length
    if length is not None and length > max_bytes:
        raise _too_large(length, max_bytes)
    data = req.bounded_stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _too_large(None, max_bytes)
    return data


def _too_large(length: int | None, max_bytes: int) -> Problem:
    got = f"{length} bytes" if length is not None else f"more than {max_bytes} bytes"
    return Problem(
        413,
        slug="body-too-large",
        title="Request body too large",
        detail=f"{got}; the limit is {max_bytes} bytes",
        limit=max_bytes,
    )
