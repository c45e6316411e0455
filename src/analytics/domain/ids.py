"""Random identifiers from the kernel's CSPRNG, fetched in blocks.

``os.urandom`` releases the GIL around its ``getrandom`` call. In a threaded server that
is a switch point on every call: another request thread takes the interpreter, and the
caller waits to get it back. The ingest path made two to four such calls per request
(the correlation id, the message and Redis ids); measured with 16 threads, that was
about a tenth of its CPU. Here each thread draws ids from its own block of
``os.urandom`` bytes and calls the kernel once per block. The bytes are the same kernel
CSPRNG output, only read ahead: ids stay unguessable.

Fork safety: a child process must never repeat its parent's bytes, so every block is
dropped in the child at fork (``os.register_at_fork``).
"""

from __future__ import annotations

import os
import threading
import uuid

BLOCK = 4096  # bytes per os.urandom call: 256 ids of 16 bytes


class _Blocks(threading.local):
    """Per thread: the current block and the read offset in it."""

    data = b""
    pos = 0


_local = _Blocks()


def _forget_blocks() -> None:
    global _local  # noqa: PLW0603 - replaced in the child, never shared with the parent
    _local = _Blocks()


os.register_at_fork(after_in_child=_forget_blocks)


def random_bytes(n: int) -> bytes:
    """``n`` bytes of ``os.urandom`` output, never handed out twice (more than
    :data:`BLOCK` at once costs a kernel call of its own)."""
    blocks = _local
    pos = blocks.pos
    end = pos + n
    if end > len(blocks.data):
        blocks.data, pos, end = os.urandom(max(BLOCK, n)), 0, n
    blocks.pos = end
    return blocks.data[pos:end]


def random_hex(nbytes: int = 16) -> str:
    """``nbytes`` random bytes as lowercase hex (like ``secrets.token_hex``)."""
    return random_bytes(nbytes).hex()


def uuid4() -> uuid.UUID:
    """A random (version 4) UUID, as ``uuid.uuid4()`` makes it."""
    return uuid.UUID(bytes=random_bytes(16), version=4)


def uuid4_str() -> str:
    return str(uuid4())
