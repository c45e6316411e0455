"""Reading request bodies within limits: content type (415), size (413), gzip (capped)."""

from __future__ import annotations

import zlib

import falcon

from analytics.entrypoints.api.problems import Problem

DEFAULT_MAX_DECOMPRESSED = 8 * 1024 * 1024


def read_json_body(
    req: falcon.Request, max_bytes: int, max_decompressed: int | None = None
) -> bytes:
    """The JSON body: compressed size <= ``max_bytes``, gzip-decoded size <= the cap."""
    ctype = (req.content_type or "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise Problem(
            415,
            slug="unsupported-media-type",
            title="Unsupported media type",
            detail=f"send Content-Type: application/json (got {req.content_type or 'none'})",
        )
    encoding = (req.get_header("Content-Encoding") or "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip"):
        raise Problem(
            415,
            slug="unsupported-content-encoding",
            title="Unsupported content encoding",
            detail=f"Content-Encoding {encoding!r}: send gzip or no encoding",
            headers={"Accept-Encoding": "gzip"},
        )
    length = req.content_length
    if length is not None and length > max_bytes:
        raise _too_large(length, max_bytes)
    # A chunked body has no Content-Length, and Falcon's bounded stream reads nothing
    # then; the server's own stream ends where the chunks end (gunicorn decodes them).
    chunked = length is None and "chunked" in (req.get_header("Transfer-Encoding") or "").lower()
    try:
        data = (req.stream if chunked else req.bounded_stream).read(max_bytes + 1)
    except Exception as exc:  # noqa: BLE001 - the server's framing errors (a bad chunk size,
        # a missing terminator, the client gone): the body is unreadable, never a 500
        raise Problem(
            400, slug="malformed", title="Malformed body",
            detail=f"the request body could not be read: {type(exc).__name__} {exc}".strip(),
        ) from None
    if len(data) > max_bytes:
        raise _too_large(None, max_bytes)
    if encoding != "identity":
        cap = max_decompressed or getattr(
            req.context, "max_decompressed_bytes", DEFAULT_MAX_DECOMPRESSED
        )
        return gunzip_capped(data, cap)
    return data


def gunzip_capped(data: bytes, cap: int) -> bytes:
    """Decompress incrementally, never holding more than ``cap + 1`` bytes: stops gzip bombs.

    Every member of a multi-member stream (RFC 1952 2.2: ``cat a.gz b.gz``, what a client
    that compresses in pieces sends) is inflated, the cap counting them all; anything
    after the last member that is not one is malformed, never silently dropped.
    """
    out = bytearray()
    rest = data
    try:
        while True:
            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            out += inflater.decompress(rest, cap + 1 - len(out))
            if len(out) > cap or inflater.unconsumed_tail:
                raise Problem(
                    413,
                    slug="decompressed-too-large",
                    title="Decompressed body too large",
                    detail=f"the gzip body inflates past {cap} bytes",
                    limit=cap,
                )
            if not inflater.eof:
                raise zlib.error("truncated gzip stream")
            rest = inflater.unused_data
            if not rest:
                return bytes(out)
            if not rest.startswith(b"\x1f\x8b"):
                raise zlib.error(f"{len(rest)} bytes after the last gzip member")
    except zlib.error as exc:
        raise Problem(
            400, slug="malformed", title="Malformed body", detail=f"bad gzip data: {exc}"
        ) from None


def _too_large(length: int | None, max_bytes: int) -> Problem:
    got = f"{length} bytes" if length is not None else f"more than {max_bytes} bytes"
    return Problem(
        413,
        slug="body-too-large",
        title="Request body too large",
        detail=f"{got}; the limit is {max_bytes} bytes",
        limit=max_bytes,
    )
