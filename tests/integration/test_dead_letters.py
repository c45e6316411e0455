"""Dead letters end to end on a real Redis broker: fail, inspect, repair, replay, count.

A storage adapter that raises StorageUnavailable drives ``process_events`` messages
through their (short, in this test) retries into ``high_priority.XQ``; a payload that
cannot decode goes there at once (PermanentError). After the repair a replay stores every
event exactly once, even events a failed attempt had already half-written.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker
from falcon import testing

from analytics.adapters.dead_letters import RedisDeadLetters
from analytics.adapters.dramatiq_queue import events_message
from analytics.bootstrap import Container, bootstrap
from analytics.domain.errors import StorageUnavailable
from analytics.entrypoints.actors import register_actors
from analytics.entrypoints.api.app import create_app
from analytics.settings import Settings
from tests.ops_support import BreakableRepository, make_events
from tests.support import analytics_cmd, child_env, wait_until

pytestmark = pytest.mark.integration
ADMIN_KEY = "ak_0123456789ab_" + "A" * 43
READ_KEY = "ak_ba9876543210_" + "B" * 43
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def env(redis_server: Any, namespace: str) -> dict[str, str]:
    return {
        **redis_server.env(namespace),
        "ANALYTICS_RETRY_MAX_RETRIES": "2",
        "ANALYTICS_RETRY_MIN_BACKOFF_MS": "10",
        "ANALYTICS_RETRY_MAX_BACKOFF_MS": "40",
        "ANALYTICS_STORAGE": "memory",
        "ANALYTICS_API_KEYS": f"ops-admin:admin:{ADMIN_KEY},ops-read:read:{READ_KEY}",
        # Storage failures must reach the dead letters here; with the storage breaker on,
        # a run of them would open it and the worker would defer instead (README,
        # "Resilience": deferred, never dead-lettered).
        "ANALYTICS_BREAKERS": "false",
    }


@pytest.fixture
def system(env: dict[str, str]) -> Iterator[tuple[Container, BreakableRepository, Worker]]:
    repo = BreakableRepository(partial=True)
    container = bootstrap(Settings.from_env(env), event_repo=repo)
    register_actors(container)
    worker = Worker(container.broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        yield container, repo, worker
    finally:
        worker.stop()
        container.broker.close()


def _counted(container: Container, repo: BreakableRepository) -> tuple[int, int]:
    """Events and unique users the aggregate store counts over the stored events' span."""
    from analytics.domain.buckets import cover, epoch_minute

    stamps = [e.timestamp for e in repo.all()]
    window = cover(epoch_minute(min(stamps)), epoch_minute(max(stamps)) + 1)
    assert container.aggregates is not None
    (summary,) = container.aggregates.summarize([window], None)
    return summary.count, summary.unique_users


def _dlq_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603, PLW1510 - the exit code is the assertion
        analytics_cmd("dlq", *args), env=child_env(**env), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def test_fail_inspect_repair_replay_counts_exactly_once(system, env) -> None:  # type: ignore[no-untyped-def]
    container, repo, _ = system
    broker, dlq = container.broker, container.dead_letters
    assert dlq is not None
    groups = [make_events(10, user="a"), make_events(10, user="b"), make_events(6, user="c")]
    overlap = groups[0][:3]  # sent again in a later, healthy message: must count once
    repo.broken = True
    for g in groups:
        broker.enqueue(events_message(g))
    bad = broker.enqueue(dramatiq.Message(
        queue_name="high_priority", actor_name="process_events", args=("{not json",),
        kwargs={}, options={},
    ))  # fmt: skip

    wait_until(lambda: len(dlq.list()) == 4, timeout=30, message="4 dead letters expected")
    letters = {d.letter_id: d for d in dlq.list(queue="high_priority")}
    poison = letters.pop(bad.message_id)
    assert poison.permanent and poison.attempts == 1 and poison.error_type == "PermanentError"
    assert {d.error_type for d in letters.values()} == {"StorageUnavailable"}
    assert {d.attempts for d in letters.values()} == {3}  # 1 run + max_retries 2
    assert all("StorageUnavailable" in d.traceback for d in letters.values())
    assert repo.failures == 9
    half_written = repo.count()
    assert half_written == 5 + 5 + 3  # each failed attempt wrote half its batch (idempotently)

    # The CLI sees the same: what failed, why, how often.
    listing = _dlq_cli(env, "list", "--json")
    assert listing.returncode == 0, listing.stderr
    data = json.loads(listing.stdout)
    assert data["count"] == 4
    assert {"queue": "high_priority", "actor": "process_events",
            "error_type": "StorageUnavailable", "count": 3} in data["groups"]  # fmt: skip
    shown = _dlq_cli(env, "show", "--id", bad.message_id[:8])
    assert shown.returncode == 0 and "PermanentError" in shown.stdout

    # Repair, then replay the storage failures (not the poison message).
    repo.broken = False
    broker.enqueue(events_message(overlap))
    replayed = _dlq_cli(env, "replay", *[a for i in letters for a in ("--id", i)], "--json")
    assert replayed.returncode == 0, replayed.stderr
    assert sorted(json.loads(replayed.stdout)["replayed"]) == sorted(letters)
    broker.join("high_priority", timeout=20_000)

    assert repo.count() == 26  # 10 + 10 + 6 distinct events, none twice
    assert {e.event_id for g in groups for e in g} == {e.event_id for e in repo.all()}
    assert _counted(container, repo) == (26, 3)  # aggregates: 26 events, users a, b, c
    assert [d.letter_id for d in dlq.list()] == [bad.message_id]

    # A second replay of the same ids finds nothing: no double effect possible.
    again = _dlq_cli(env, "replay", "--id", next(iter(letters)))
    assert again.returncode == 1 and "no dead letter" in again.stderr
    assert "Traceback" not in again.stderr
    assert repo.count() == 26

    assert _counted(container, repo) == (26, 3)
    purged = _dlq_cli(env, "purge", "--queue", "high_priority")
    assert purged.returncode == 0 and "purged 1" in purged.stdout
    assert dlq.list() == []


def test_http_admin_dlq(system) -> None:  # type: ignore[no-untyped-def]
    container, repo, _ = system
    broker, dlq = container.broker, container.dead_letters
    assert dlq is not None
    client = testing.TestClient(create_app(container))
    repo.broken = True
    events = make_events(4)
    msg = broker.enqueue(events_message(events))
    wait_until(lambda: len(dlq.list()) == 1, timeout=30)

    # Admin keys only: no key is 401, a read key is 403.
    assert client.simulate_get("/api/v1/admin/dlq").status_code == 401
    read_only = {"X-API-Key": READ_KEY}
    assert client.simulate_get("/api/v1/admin/dlq", headers=read_only).status_code == 403
    refused = client.simulate_post(
        "/api/v1/admin/dlq/replay", json={"all": True}, headers=read_only
    )
    assert refused.status_code == 403 and len(dlq.list()) == 1

    listing = client.simulate_get(
        "/api/v1/admin/dlq", params={"queue": "high_priority"}, headers=ADMIN
    )
    assert listing.status_code == 200
    assert listing.json["count"] == 1 and listing.json["items"][0]["id"] == msg.message_id
    detail = client.simulate_get(f"/api/v1/admin/dlq/{msg.message_id}", headers=ADMIN)
    assert detail.status_code == 200 and "StorageUnavailable" in detail.json["traceback"]
    missing = client.simulate_get("/api/v1/admin/dlq/ffffffff-0000", headers=ADMIN)
    assert missing.status_code == 404
    bad_queue = client.simulate_get("/api/v1/admin/dlq", params={"queue": "nope"}, headers=ADMIN)
    assert bad_queue.status_code == 400
    # A parameter these routes do not take is refused, not ignored (QA: 200 for all three).
    for method, path, qs in [
        ("GET", f"/api/v1/admin/dlq/{msg.message_id}", "x=1"),
        ("POST", "/api/v1/admin/dlq/replay", "x=1"),
        ("POST", "/api/v1/admin/dlq/purge", "x=1&x=2"),
    ]:
        odd = client.simulate_request(method, path, query_string=qs, headers=ADMIN,
                                      json={"ids": [msg.message_id]})  # fmt: skip
        assert (odd.status_code, odd.json["parameter"]) == (400, "x"), (path, odd.text)
    assert len(dlq.list()) == 1  # neither replayed nor purged
    empty = client.simulate_post("/api/v1/admin/dlq/replay", json={}, headers=ADMIN)
    assert empty.status_code == 422  # no selection: refuse rather than replay everything
    assert [(e["field"], e["rule"]) for e in empty.json["errors"]] == [("$", "selection_required")]
    unknown = client.simulate_get("/api/v1/admin/dlq", params={"foo": "1"}, headers=ADMIN)
    assert unknown.status_code == 400 and unknown.json["parameter"] == "foo"
    for body, expected in [  # a body that breaks its schema is a 422 naming each field
        ({"all": True, "x": 1}, [("x", "unknown_field")]),
        ({"ids": "abc"}, [("ids", "invalid")]),
        ({"queue": "nope"}, [("queue", "invalid")]),
        # Mixed kinds: the ids won and the rest was ignored (a purge "of ids in queue X"
        # purged them in any queue; QA).
        ({"all": True, "ids": ["x"]}, [("$", "selection_conflict")]),
        ({"ids": [msg.message_id], "queue": "aggregations"}, [("$", "selection_conflict")]),
        ({"all": True, "actor": "process_events"}, [("$", "selection_conflict")]),
        # Every failure, not the first msgspec met (fuzz QA: one of four listed).
        ({"ids": 5, "queue": 7, "extra": 1, "all": "yes"},
         [("ids", "invalid"), ("queue", "invalid"), ("extra", "unknown_field"), ("all", "invalid")]),
        ({"ids": [1, 2], "bogus": 1, "queue": "nope"},
         [("ids", "invalid"), ("bogus", "unknown_field"), ("queue", "invalid")]),
    ]:
        bad = client.simulate_post("/api/v1/admin/dlq/replay", json=body, headers=ADMIN)
        assert bad.status_code == 422, (body, bad.text)
        assert [(e["field"], e["rule"]) for e in bad.json["errors"]] == expected, bad.json
    # A member given twice: the last one counts, as for events (review).
    twice = client.simulate_post("/api/v1/admin/dlq/purge",
                                 body=b'{"queue": 5, "queue": "maintenance"}',
                                 headers={**ADMIN, "Content-Type": "application/json"})  # fmt: skip
    assert (twice.status_code, twice.json["count"]) == (200, 0), twice.text  # none there
    broken = client.simulate_post("/api/v1/admin/dlq/replay", body=b'{"ids": 5, oops',
                                  headers={**ADMIN, "Content-Type": "application/json"})  # fmt: skip
    assert broken.status_code == 400, broken.text  # not JSON after all: 400, not 500
    # A lone surrogate escape becomes U+FFFD, as on the ingest routes (fuzz QA: a 400).
    lone = client.simulate_post("/api/v1/admin/dlq/purge", body=b'{"actor": "x\\ud800"}',
                                headers={**ADMIN, "Content-Type": "application/json"})  # fmt: skip
    assert (lone.status_code, lone.json["count"]) == (200, 0), lone.text  # no such actor
    assert len(dlq.list()) == 1  # none of them replayed anything

    repo.broken = False
    done = client.simulate_post(
        "/api/v1/admin/dlq/replay", json={"ids": [msg.message_id]}, headers=ADMIN
    )
    assert done.status_code == 200 and done.json["ids"] == [msg.message_id]
    assert done.json["skipped"] == []
    broker.join("high_priority", timeout=20_000)
    assert repo.count() == 4
    assert client.simulate_get("/api/v1/admin/dlq", headers=ADMIN).json["count"] == 0


def test_cli_bad_input(env) -> None:  # type: ignore[no-untyped-def]
    for args, code, text in [
        (("show", "--id", "does-not-exist"), 1, "no dead letter"),
        (("show", "--id", "abc"), 1, "a prefix needs 6 characters or more"),
        (("list", "--queue", "nope"), 2, "unknown queue"),
        (("replay",), 2, "give message ids"),
        (("purge",), 2, "give message ids"),
    ]:
        proc = _dlq_cli(env, *args)
        assert proc.returncode == code, (args, proc.stderr)
        assert text in proc.stderr and "Traceback" not in proc.stderr


def test_a_message_whose_envelope_does_not_decode_is_dead_lettered_once(system, env) -> None:  # type: ignore[no-untyped-def]
    """Bytes that are not a message at all (another producer wrote them into the queue):
    dramatiq's consumer raised on them, restarted, and the orphan sweep put them back, a
    critical line every few seconds, forever. Now they go to the dead letters, where the
    CLI lists and purges them, and the queue goes on."""
    container, repo, _ = system
    broker, dlq = container.broker, container.dead_letters
    nacked: list[tuple[str, str]] = []

    class NackWatch(dramatiq.Middleware):  # what the dead-letter counter hooks on
        def after_nack(self, broker, message):  # type: ignore[no-untyped-def]
            nacked.append((message.actor_name, message.queue_name))

    broker.add_middleware(NackWatch())
    ns = broker.namespace
    broker.client.hset(f"{ns}:high_priority.msgs", "garbage-1", b"\xff\x00 not json")
    broker.client.rpush(f"{ns}:high_priority", "garbage-1")
    good = make_events(3, user="after-garbage")
    broker.enqueue(events_message(good))
    wait_until(lambda: len(dlq.list()) == 1, timeout=30, message="the garbage never dead-lettered")
    (letter,) = dlq.list(queue="high_priority")
    assert (letter.letter_id, letter.error_type, letter.permanent) == ("garbage-1", "DecodeError", True)
    assert nacked == [("(undecodable)", "high_priority")]  # counted as dead-lettered, once
    wait_until(lambda: {e.event_id for e in repo.all()} >= {e.event_id for e in good}, timeout=30,
               message="the queue stopped behind the garbage")  # fmt: skip
    assert dlq.replay(["garbage-1"]) == []  # nothing to replay
    replayed = _dlq_cli(env, "replay", "--id", "garbage-1")  # said "replayed 0", exit 0
    assert replayed.returncode == 1 and "not replayed" in replayed.stderr, replayed
    assert "dlq purge --id" in replayed.stderr and len(dlq.list()) == 1
    over_http = testing.TestClient(create_app(container)).simulate_post(
        "/api/v1/admin/dlq/replay", json={"ids": ["garbage-1"]}, headers=ADMIN)  # fmt: skip
    assert over_http.status_code == 200, over_http.text
    assert over_http.json["count"] == 0 and over_http.json["skipped"] == ["garbage-1"]
    listing = _dlq_cli(env, "list", "--json")
    assert listing.returncode == 0 and "garbage-1" in listing.stdout, listing.stderr
    purged = _dlq_cli(env, "purge", "--id", "garbage-1")
    assert purged.returncode == 0, purged.stderr
    assert dlq.list() == []
    assert broker.client.llen(f"{ns}:high_priority") == 0


def test_an_envelope_without_its_redis_id_is_dead_lettered_and_replays(system) -> None:  # type: ignore[no-untyped-def]
    """A well-formed envelope another producer pushed without ``options.redis_message_id``
    (dramatiq's enqueue always sets it): the consumer raised KeyError on it and the sweep
    put it back every few seconds, forever (QA). Now it is a dead letter that says why,
    counted once, and a replay gives it an id of its own and stores its events."""
    container, repo, _ = system
    broker, dlq = container.broker, container.dead_letters
    nacked: list[tuple[str, str]] = []

    class NackWatch(dramatiq.Middleware):
        def after_nack(self, broker, message):  # type: ignore[no-untyped-def]
            nacked.append((message.actor_name, message.queue_name))

    broker.add_middleware(NackWatch())
    ns = broker.namespace
    theirs = make_events(2, user="no-redis-id")
    foreign = events_message(theirs)
    assert "redis_message_id" not in foreign.options
    broker.client.hset(f"{ns}:high_priority.msgs", "foreign-1", foreign.encode())
    broker.client.rpush(f"{ns}:high_priority", "foreign-1")
    good = make_events(3, user="after-foreign")
    broker.enqueue(events_message(good))
    wait_until(lambda: len(dlq.list()) == 1, timeout=30, message="never dead-lettered")
    (letter,) = dlq.list(queue="high_priority")
    assert (letter.letter_id, letter.error_type, letter.permanent) == (
        foreign.message_id, "MissingMessageId", True)  # fmt: skip
    assert nacked == [(foreign.actor_name, "high_priority")]
    wait_until(lambda: {e.event_id for e in repo.all()} >= {e.event_id for e in good}, timeout=30,
               message="the queue stopped behind the foreign message")  # fmt: skip
    assert dlq.replay([foreign.message_id]) == [foreign.message_id]
    wanted = {e.event_id for e in good + theirs}
    wait_until(lambda: {e.event_id for e in repo.all()} == wanted, timeout=30,
               message="the replayed message was not stored")  # fmt: skip
    assert dlq.list() == [] and nacked == [(foreign.actor_name, "high_priority")]


def test_a_replayed_message_gets_a_fresh_retry_budget(system) -> None:  # type: ignore[no-untyped-def]
    """Mutation QA: a replay drops the dead message's ``retries`` count. Kept, the replayed
    message had already spent its retries, and the first transient failure after the
    repair (one more storage hiccup) sent it straight back to the dead letters instead of
    being retried: the operator's replay silently did nothing."""
    container, repo, _ = system
    broker, dlq = container.broker, container.dead_letters
    events = make_events(4, user="replayed")
    repo.broken = True
    msg = broker.enqueue(events_message(events))
    wait_until(lambda: len(dlq.list()) == 1, timeout=30, message="never dead-lettered")
    (letter,) = dlq.list()
    assert letter.attempts == 3  # its budget spent: 1 run + max_retries 2

    repo.broken = False
    add_many, hiccups = repo.add_many, [1]

    def one_more_hiccup(batch):  # type: ignore[no-untyped-def]
        if hiccups[0]:
            hiccups[0] -= 1
            raise StorageUnavailable("one more hiccup after the repair (test)")
        return add_many(batch)

    repo.add_many = one_more_hiccup
    assert dlq.replay([msg.message_id]) == [msg.message_id]
    wanted = {e.event_id for e in events}
    wait_until(lambda: {e.event_id for e in repo.all()} >= wanted or bool(dlq.list()),
               timeout=30, message="the replayed message was neither stored nor dead-lettered")  # fmt: skip
    assert hiccups == [0]  # the replay did meet the failure
    assert dlq.list() == [], "the replayed message went back to the dead letters on its first failure"
    assert {e.event_id for e in repo.all()} >= wanted


def test_a_replay_whose_enqueue_fails_keeps_the_dead_letter(
    redis_server: Any, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutation QA: a replay enqueues the copy first and only then removes the letter. In
    the other order an enqueue that fails (the connection reset as it is sent) left the
    letter deleted and the message nowhere: the replay failed and there was nothing left
    to replay again."""
    broker = RedisBroker(client=redis_server.client(), namespace=namespace)
    broker.declare_queue("high_priority")
    dlq = RedisDeadLetters(broker)
    try:
        sent = broker.enqueue(events_message(make_events(2, user="kept")))
        consumer = broker.consume("high_priority", timeout=1000)
        fetched = next(consumer)
        assert fetched is not None and fetched.message_id == sent.message_id
        consumer.nack(fetched)  # dramatiq's way into the dead letters
        consumer.close()
        assert [d.letter_id for d in dlq.list()] == [sent.message_id]

        def reset(message: dramatiq.Message[Any], *, delay: int | None = None) -> None:
            raise redis.ConnectionError("Connection reset by peer (test)")

        with monkeypatch.context() as patch:
            patch.setattr(broker, "enqueue", reset)
            with pytest.raises(redis.ConnectionError):
                dlq.replay([sent.message_id])

        assert [d.letter_id for d in dlq.list()] == [sent.message_id], "the dead letter was lost"
        assert broker.do_qsize("high_priority") == 0  # and nothing was queued
        assert dlq.replay([sent.message_id]) == [sent.message_id]  # the retry of the replay
        assert broker.do_qsize("high_priority") == 1 and dlq.list() == []
    finally:
        broker.close()
