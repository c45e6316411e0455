"""Random ids read ahead from os.urandom (domain/ids.py): unique, well-formed, fork-safe."""

from __future__ import annotations

import os
import threading
import uuid

import pytest

from analytics.domain import ids
from analytics.domain.clock import uuid4
from tests.support import in_forked_child

pytestmark = pytest.mark.unit


def test_uuid4_is_a_version_4_rfc_4122_uuid():
    for _ in range(1000):
        u = uuid4()
        assert u.version == 4 and u.variant == uuid.RFC_4122
        assert uuid.UUID(str(u)) == u


def test_random_hex_has_the_asked_length():
    assert len(ids.random_hex(16)) == 32
    short = ids.random_hex(8)
    assert len(short) == 16 and set(short) <= set("0123456789abcdef")


def test_ids_never_repeat_across_blocks_and_threads():
    """Many blocks per thread, eight threads at once: every id is distinct."""
    per_thread = 3 * ids.BLOCK // 16 + 7  # crosses several block refills
    results: list[list[str]] = []

    def draw() -> None:
        results.append([ids.random_hex(16) for _ in range(per_thread)])

    threads = [threading.Thread(target=draw) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    drawn = [x for r in results for x in r]
    assert len(drawn) == 8 * per_thread
    assert len(set(drawn)) == len(drawn)


def test_a_request_larger_than_a_block_is_served():
    assert len(ids.random_bytes(ids.BLOCK + 10)) == ids.BLOCK + 10


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_repeats_its_parent_s_ids():
    """The parent holds a half-used block at fork; the child must not serve the rest of
    it (the parent will). Without the at-fork reset both would return the same ids."""
    ids.random_hex(16)  # a block is loaded, most of it unread
    child = in_forked_child(lambda: "".join(ids.random_hex(16) for _ in range(10)))
    parent = "".join(ids.random_hex(16) for _ in range(10))
    assert len(child) == len(parent) == 320
    assert {child[i : i + 32] for i in range(0, 320, 32)}.isdisjoint(
        parent[i : i + 32] for i in range(0, 320, 32)
    )
