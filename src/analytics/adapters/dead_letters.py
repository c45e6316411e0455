"""DeadLetters over the Redis broker's own keys.

Dramatiq's Redis broker keeps a queue's dead letters in ``<ns>:<queue>.XQ`` (a sorted set
of broker message ids by time of death) and ``<ns>:<queue>.XQ.msgs`` (id -> encoded
message); it drops them after ``dead_message_ttl``. The message's options carry why it
failed: ``failure`` (written by :class:`~analytics.adapters.dramatiq_middleware.
DeadLetterRecorder`) and, from Dramatiq's Retries middleware, ``retries`` and ``traceback``.

RabbitMQ keeps dead letters in ``<queue>.XQ`` queues (a message TTL of 7 days):
:class:`RabbitDeadLetters` reads them with ``basic_get`` on a channel of its own and
closes it, which returns every letter it did not replay or purge. There the stored message is the one that
was delivered, so ``failure`` is absent: it comes from the :class:`~analytics.adapters.
dead_letter_recorder.FailureLog` in the Redis beside RabbitMQ when there is one, else from
the Retries traceback when the message was retried at least once; the time of death from
``x-death``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from analytics.adapters.dead_letter_recorder import FailureLog
from analytics.adapters.dramatiq_queue import QUEUES, UNDECODABLE_ACTOR
from analytics.domain.errors import QueueUnavailable, StorageUnavailable
from analytics.domain.operations import DeadLetter

#: Options a replay drops: broker bookkeeping and the last run's failure.
_RESET = ("redis_message_id", "eta", "retries", "traceback", "requeue_timestamp", "failure")


def letter_from_message(message: dramatiq.Message[Any], queue: str, died_ms: float) -> DeadLetter:
    opts = message.options
    failure: dict[str, Any] = opts.get("failure") or {}
    tb = failure.get("traceback") or opts.get("traceback") or ""
    last_line = tb.strip().splitlines()[-1] if tb.strip() else ""
    error_type, _, error = last_line.partition(": ")
    preview = repr(message.args)[:300]
    return DeadLetter(
        letter_id=message.message_id,
        queue=queue,
        actor=message.actor_name,
        failed_at=datetime.fromtimestamp(died_ms / 1000, UTC),
        attempts=int(failure.get("attempts", opts.get("retries", 0) + 1)),
        error_type=failure.get("error_type") or error_type.rsplit(".", 1)[-1] or "unknown",
        error=failure.get("error", error),
        permanent=bool(failure.get("permanent", False)),
        traceback=tb,
        replays=int(opts.get("replays", 0)),
        args_preview=preview,
        correlation_ids=tuple(opts.get("correlation_ids", ())),
    )


def replay_copy(message: dramatiq.Message[Any], queue: str) -> dramatiq.Message[Any]:
    """The message as first sent (same id, so task status follows it), one replay more."""
    options = {k: v for k, v in message.options.items() if k not in _RESET}
    options["replays"] = int(options.get("replays", 0)) + 1
    return dramatiq.Message(
        queue_name=queue,
        actor_name=message.actor_name,
        args=message.args,
        kwargs=message.kwargs,
        options=options,
        message_id=message.message_id,
        message_timestamp=message.message_timestamp,
    )


def _decoded_or_placeholder(data: bytes, rid: str, queue: str) -> dramatiq.Message[Any]:
    try:
        return dramatiq.Message.decode(data)
    except dramatiq.DecodeError:
        return dramatiq.Message(
            queue_name=queue, actor_name=UNDECODABLE_ACTOR, args=(repr(data[:300]),), kwargs={},
            options={"failure": {"error_type": "DecodeError", "attempts": 1, "permanent": True,
                                 "error": "the message envelope does not decode"}},
            message_id=rid, message_timestamp=0,
        )  # fmt: skip


class RedisDeadLetters:
    """DeadLetters port over a :class:`RedisBroker`'s ``.XQ`` keys."""

    def __init__(self, broker: RedisBroker, queues: Sequence[str] = QUEUES) -> None:
        self.broker = broker
        self.client = broker.client
        self.ns = broker.namespace
        self.queues = tuple(queues)

    def _xq(self, queue: str) -> str:
        return f"{self.ns}:{queue}.XQ"

    def _entries(self, queue: str) -> list[tuple[str, float, dramatiq.Message[Any]]]:
        try:
            scored = self.client.zrange(self._xq(queue), 0, -1, withscores=True)
            if not scored:
                return []
            raw_ids = [rid for rid, _ in scored]
            datas = self.client.hmget(self._xq(queue) + ".msgs", raw_ids)
        except Exception as exc:  # redis.RedisError and socket errors
            raise StorageUnavailable(f"redis: {exc}") from exc
        out = []
        for (rid, score), data in zip(scored, datas, strict=True):
            if data is None:  # expired between the two reads
                continue
            rid_s = rid.decode() if isinstance(rid, bytes) else str(rid)
            out.append((rid_s, float(score), _decoded_or_placeholder(data, rid_s, queue)))
        return out

    def list(self, *, queue: str | None = None, actor: str | None = None) -> list[DeadLetter]:
        letters = []
        for q in [queue] if queue else self.queues:
            for _, died, message in self._entries(q):
                if actor is None or message.actor_name == actor:
                    letters.append(letter_from_message(message, q, died))
        return sorted(letters, key=lambda d: (d.failed_at, d.letter_id))

    def _locate(self, letter_ids: Sequence[str]) -> list[tuple[str, str, dramatiq.Message[Any]]]:
        wanted = set(letter_ids)
        found = []
        for q in self.queues:
            for rid, _, message in self._entries(q):
                if message.message_id in wanted:
                    found.append((q, rid, message))
        return found

    def _remove(self, queue: str, rid: str) -> bool:
        pipe = self.client.pipeline(transaction=True)
        pipe.zrem(self._xq(queue), rid)
        pipe.hdel(self._xq(queue) + ".msgs", rid)
        removed, _ = pipe.execute()
        return bool(removed)

    def replay(self, letter_ids: Sequence[str]) -> list[str]:
        done = []
        for queue, rid, message in self._locate(letter_ids):
            if message.actor_name == UNDECODABLE_ACTOR:
                continue  # nothing to replay: purge it
            # Enqueue first, then remove: a crash in between replays twice, which the
            # idempotent actors absorb; the other order could lose the message.
            self.broker.enqueue(replay_copy(message, queue))
            self._remove(queue, rid)
            done.append(message.message_id)
        return done

    def purge(self, letter_ids: Sequence[str]) -> list[str]:
        return [m.message_id for q, rid, m in self._locate(letter_ids) if self._remove(q, rid)]

    def depths(self) -> dict[str, int]:
        pipe = self.client.pipeline(transaction=False)
        for q in self.queues:
            pipe.zcard(self._xq(q))
        return {q: int(n) for q, n in zip(self.queues, pipe.execute(), strict=True)}

    def depths_key(self) -> str:
        return f"{self.ns}:ops:dlq_depths"

    def record_depths(self, depths: dict[str, int], at: datetime) -> None:
        mapping: dict[str, str] = {q: str(n) for q, n in depths.items()}
        mapping["measured_at"] = at.isoformat()
        self.client.hset(self.depths_key(), mapping=mapping)

    def recorded_depths(self) -> dict[str, str]:
        """What the last depth check stored (for the metrics exporter and tests)."""
        raw = self.client.hgetall(self.depths_key())
        return {k.decode(): v.decode() for k, v in raw.items()}


class RabbitDeadLetters:
    """DeadLetters port over a RabbitMQ broker's ``<queue>.XQ`` queues.

    Each operation reads a queue's letters on a channel of its own, unacknowledged, acks
    what it replays or purges and closes the channel: RabbitMQ puts every letter it did
    not ack back, in its original order. ``broker`` is a
    :class:`~analytics.adapters.rabbitmq_broker.KeepingRabbitmqBroker`: its channels come
    on a new connection once RabbitMQ closed the thread's last one (QA: every call failed
    until that thread happened to enqueue).
    """

    def __init__(
        self, broker: Any, queues: Sequence[str] = QUEUES, failures: FailureLog | None = None
    ) -> None:
        self.broker = broker
        self.queues = tuple(queues)
        self.failures = failures

    def _visit(self, queue: str, decide: Any) -> list[str]:
        """Call ``decide(message, died_ms)`` on every letter there when the visit begins,
        each once; ack those it returns True for.

        Only as many as the queue held then: a replayed copy that fails again at once is
        dead-lettered behind them, and reading until the queue was empty met it again and
        sent it again, one replay of one letter counting 15 (QA)."""
        done: list[str] = []
        with _rabbitmq_errors(), self._channel() as channel:
            held = _held(channel, queue)
            for _ in range(held):
                method, props, body = channel.basic_get(f"{queue}.XQ", auto_ack=False)
                if method is None:
                    break
                # One that does not decode (bytes another producer published) is a letter
                # too: it made every list, replay and purge raise (QA), all of them stuck.
                rid = props.message_id or "undecodable-" + hashlib.sha256(body).hexdigest()[:12]
                message = _decoded_or_placeholder(body, rid, queue)
                if decide(message, time_of_death(props)):
                    channel.basic_ack(method.delivery_tag)
                    done.append(message.message_id)
        return done

    @contextmanager
    def _channel(self) -> Iterator[Any]:
        """A channel of its own, closed after (unless RabbitMQ closed it: a missing queue)."""
        channel = self.broker.new_channel()
        try:
            yield channel
        finally:
            if channel.is_open:
                channel.close()  # unacknowledged letters go back to the queue

    def list(self, *, queue: str | None = None, actor: str | None = None) -> list[DeadLetter]:
        found: list[tuple[dramatiq.Message[Any], str, float]] = []
        for q in [queue] if queue else self.queues:

            def keep(message: dramatiq.Message[Any], died: float, q: str = q) -> bool:
                if actor is None or message.actor_name == actor:
                    found.append((message, q, died))
                return False

            self._visit(q, keep)
        reasons = self.failures.read([m.message_id for m, _, _ in found]) if self.failures else {}
        for message, _, _ in found:
            if message.message_id in reasons and "failure" not in message.options:
                message.options["failure"] = reasons[message.message_id]
        letters = [letter_from_message(m, q, died) for m, q, died in found]
        return sorted(letters, key=lambda d: (d.failed_at, d.letter_id))

    def replay(self, letter_ids: Sequence[str]) -> list[str]:
        wanted = set(letter_ids)
        done: list[str] = []
        sent: set[str] = set()
        for q in self.queues:

            def again(message: dramatiq.Message[Any], died: float, q: str = q) -> bool:
                if message.message_id not in wanted or message.actor_name == UNDECODABLE_ACTOR:
                    return False  # nothing to replay in an undecodable one: purge it
                if message.message_id not in sent:  # a letter held twice is sent once
                    self.broker.enqueue(replay_copy(message, q))  # published before the ack
                    sent.add(message.message_id)
                return True

            done += self._visit(q, again)
        if self.failures is not None:
            self.failures.forget(sorted(sent))
        return list(dict.fromkeys(done))

    def purge(self, letter_ids: Sequence[str]) -> list[str]:
        wanted = set(letter_ids)
        done: list[str] = []
        for q in self.queues:
            done += self._visit(q, lambda message, died: message.message_id in wanted)
        return done

    def depths(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with _rabbitmq_errors():
            for q in self.queues:  # a channel each: RabbitMQ closes one on a missing queue
                with self._channel() as channel:
                    out[q] = _held(channel, q)
        return out

    def record_depths(self, depths: dict[str, int], at: datetime) -> None:
        """RabbitMQ exposes queue depths itself (management API); nothing to keep."""


def _held(channel: Any, queue: str) -> int:
    """Letters in ``<queue>.XQ``; 0 when it does not exist yet (no worker of this vhost has
    declared it: RabbitMQ answers 404 and closes the channel; review: that was a 503)."""
    try:
        return int(channel.queue_declare(f"{queue}.XQ", passive=True).method.message_count)
    except Exception as exc:
        if getattr(exc, "reply_code", None) == 404:
            return 0
        raise


@contextmanager
def _rabbitmq_errors() -> Iterator[None]:
    """pika's errors (RabbitMQ unreachable, our connection refused or closed) and
    dramatiq's connection errors (a replay's enqueue) as the broker being unavailable: 503
    with Retry-After on the admin routes, not a 500 (QA)."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, dramatiq.errors.BrokerConnectionError) or type(
            exc
        ).__module__.startswith("pika"):
            raise QueueUnavailable(f"RabbitMQ: {exc!r}"[:300]) from exc
        raise


def time_of_death(props: Any) -> float:
    """Milliseconds since the epoch from RabbitMQ's ``x-death`` header (now if absent)."""
    import time  # noqa: PLC0415

    deaths = (getattr(props, "headers", None) or {}).get("x-death") or []
    when = deaths[0].get("time") if deaths else None
    if isinstance(when, datetime):
        return when.timestamp() * 1000
    return time.time() * 1000
