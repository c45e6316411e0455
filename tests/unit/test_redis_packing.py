"""The broker's Redis command packer: the same RESP bytes as hiredis, large values uncopied."""

from __future__ import annotations

import hiredis
from hypothesis import given
from hypothesis import strategies as st

from analytics.adapters.dramatiq_queue import build_broker
from analytics.adapters.redis_packing import LARGE_VALUE_BYTES, LargeValuePacker
from analytics.settings import Settings

args = st.lists(
    st.binary(max_size=50)
    | st.binary(min_size=LARGE_VALUE_BYTES + 1, max_size=LARGE_VALUE_BYTES + 100)
    | st.text(max_size=20)
    | st.integers(-(2**63), 2**63 - 1),
    max_size=6,
)


@given(name=st.sampled_from([b"EVALSHA", b"SET", "HSET"]), rest=args)
def test_packs_the_same_bytes_as_hiredis(name: bytes | str, rest: list[object]) -> None:
    packed = LargeValuePacker().pack(name, *rest)
    assert b"".join(bytes(chunk) for chunk in packed) == hiredis.pack_command((name, *rest))


def test_a_large_value_is_handed_on_as_it_is() -> None:
    value = b"x" * (LARGE_VALUE_BYTES + 1)
    packed = LargeValuePacker().pack(b"EVALSHA", b"sha", 1, b"ns", value, 42)
    assert any(chunk is value for chunk in packed)  # not copied: the same object
    assert len(LargeValuePacker().pack(b"SET", b"k", b"x" * 100)) == 1  # hiredis: one buffer


def test_the_redis_broker_packs_with_it() -> None:
    broker = build_broker(Settings.from_env({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": "1"}))
    kwargs = broker.client.connection_pool.connection_kwargs  # type: ignore[attr-defined]
    assert isinstance(kwargs["command_packer"], LargeValuePacker)
