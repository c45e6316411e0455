"""The in-process level in front of the shared cache: admission by TTL, LRU bound,
versioned keys (a bump is never served stale), promotion of long-lived remote values."""

from __future__ import annotations

from datetime import UTC, datetime

from analytics.adapters.memory import InMemoryCache
from analytics.adapters.tiered_cache import TieredCache
from analytics.domain.clock import FixedClock

NOW = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)


class Mono:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make(entries: int = 4, min_ttl: int = 3600) -> tuple[TieredCache, InMemoryCache, Mono]:
    remote = InMemoryCache(FixedClock(NOW))
    mono = Mono()
    return TieredCache(remote, max_entries=entries, min_ttl_s=min_ttl, clock=mono), remote, mono


def test_values_written_here_stay_local_for_their_own_ttl() -> None:
    t, remote, mono = make()
    t.set_many([("closed", b"C", 86_400), ("open", b"O", 10), ("dash", b"D", 5)])
    assert len(t) == 3
    assert t.get_many(["closed", "open", "dash"]) == [b"C", b"O", b"D"]
    assert (t.local_stats.hits, t.redis_stats.hits) == (3, 0) and remote.hits == 0
    mono.t += 6  # the dashboard answer is 5 s old: gone here as it is in Redis
    remote.data.pop("dash")
    assert t.get_many(["dash", "open"]) == [None, b"O"]


def test_lru_is_bounded() -> None:
    t, _, _ = make(entries=3)
    t.set_many([(f"k{i}", b"v", 86_400) for i in range(10)])
    assert len(t) == 3
    t.get_many(["k0"])  # evicted long ago: a remote hit, promoted again
    assert t.redis_stats.hits == 1 and len(t) == 3


def test_local_entries_expire_with_their_ttl() -> None:
    t, _, mono = make()
    t.set_many([("k", b"v", 3600)])
    mono.t += 3601
    t.get_many(["k"])
    assert t.local_stats.misses == 1


def test_lookup_reads_versions_remotely_and_never_serves_a_bumped_value() -> None:
    t, remote, _ = make()
    entries = [("agg:a", ["2026-03-01"]), ("agg:b", ["2026-03-01", "2026-03-02"])]
    first = t.lookup(entries)
    assert first == [("agg:a:0", None), ("agg:b:0.0", None)]
    t.set_many([("agg:a:0", b"A0", 86_400), ("agg:b:0.0", b"B0", 86_400)])
    assert t.lookup(entries) == [("agg:a:0", b"A0"), ("agg:b:0.0", b"B0")]
    assert t.local_stats.hits == 2 and remote.hits == 0
    remote.bump(["2026-03-02"])  # a late event, or a reconcile, in another process
    again = t.lookup(entries)
    assert again == [("agg:a:0", b"A0"), ("agg:b:0.1", None)]  # recomputed, not stale


def test_remote_long_lived_values_are_promoted_others_are_not() -> None:
    writer, remote, _ = make()
    writer.set_many([("closed", b"C", 86_400), ("open", b"O", 10)])
    reader = TieredCache(remote, max_entries=4, min_ttl_s=3600)  # another process
    assert reader.get_many(["closed", "open"]) == [b"C", b"O"]
    assert len(reader) == 1
    assert reader.get_many(["closed"]) == [b"C"] and reader.local_stats.hits == 1


def test_unavailable_shared_level_skips_both_levels() -> None:
    t, remote, _ = make()
    t.set_many([("agg:a:0", b"A0", 86_400)])
    remote.down = True
    assert t.lookup([("agg:a", ["2026-03-01"])]) is None
    assert t.versions(["2026-03-01"]) is None


def test_documents_enter_only_when_long_lived() -> None:
    t, _, _ = make()
    t.put_local("doc:1", b"D", 86_400)
    t.put_local("doc:2", b"E", 60)
    assert t.get_local("doc:1") == b"D" and t.get_local("doc:2") is None
    assert t.stats()["local"]["hit_ratio"] == 0.5


def test_disabled_local_level_still_flags_values() -> None:
    off, remote, _ = make(entries=0)
    off.set_many([("closed", b"C", 86_400)])
    assert len(off) == 0 and off.get_many(["closed"]) == [b"C"]
    on = TieredCache(remote, max_entries=4, min_ttl_s=3600)
    assert on.get_many(["closed"]) == [b"C"] and len(on) == 1


def test_lookup_is_one_round_trip_and_a_held_current_value_is_served_locally() -> None:
    t, remote, _ = make()
    entries = [("agg:a", ["2026-03-01"]), ("dash:w", ["2026-03-01", "2026-03-02"])]
    assert t.lookup(entries) == [("agg:a:0", None), ("dash:w:0.0", None)]
    assert remote.round_trips == 1
    t.set_many([("agg:a:0", b"A0", 86_400), ("dash:w:0.0", b"W0", 5)])
    remote.round_trips = 0
    # both are held here: Redis only confirms their keys are still current
    assert t.lookup(entries) == [("agg:a:0", b"A0"), ("dash:w:0.0", b"W0")]
    assert remote.round_trips == 1 and remote.hits == 0
    assert (t.local_stats.hits, t.redis_stats.hits) == (2, 0)
    # another process's short-lived answer comes back in the same single reply
    other = TieredCache(remote, max_entries=4, min_ttl_s=3600)
    assert other.lookup(entries) == [("agg:a:0", b"A0"), ("dash:w:0.0", b"W0")]
    assert remote.round_trips == 2 and len(other) == 1  # only the long-lived one promoted


def test_a_held_value_is_never_served_after_a_bump_even_if_redis_lost_the_value() -> None:
    t, remote, _ = make()
    entries = [("agg:a", ["2026-03-01"])]
    t.lookup(entries)
    t.set_many([("agg:a:0", b"A0", 86_400)])
    remote.data.clear()  # Redis evicted or restarted: the local copy is still current
    assert t.lookup(entries) == [("agg:a:0", b"A0")]
    remote.bump(["2026-03-01"])
    remote.round_trips = 0
    assert t.lookup(entries) == [("agg:a:1", None)]
    assert remote.round_trips == 2  # the versions said "changed": the script fetched
    t.set_many([("agg:a:1", b"A1", 86_400)])
    assert t.lookup(entries) == [("agg:a:1", b"A1")]
    assert len(t) == 2  # the retired version ages out of the LRU; it is never asked for


def test_the_held_index_follows_the_lru() -> None:
    t, _, _ = make(entries=2)
    t.set_many([(f"agg:{i}:0", b"v", 86_400) for i in range(5)])
    assert len(t) == 2 and set(t._held) == {"agg:3", "agg:4"}


def test_an_unreachable_shared_level_is_asked_once_per_lookup() -> None:
    t, remote, _ = make()
    entries = [("dash:w", ["2026-03-01"])]
    t.lookup(entries)
    t.set_many([("dash:w:0", b"W0", 5)])
    remote.down = True
    remote.round_trips = 0
    assert t.lookup(entries) is None  # held here, but never served unconfirmed
    assert remote.round_trips == 1 and remote.errors == 1
