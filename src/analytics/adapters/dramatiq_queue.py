"""Dramatiq brokers and the ingest side's task queue, with group commit.

Group commit: concurrent requests in one API process share one broker round trip. Each
request puts its events on a pending list; a leader (the first caller that finds nobody
sending) sends everything pending as a single Dramatiq message and wakes every waiter with
the message id once Redis (or RabbitMQ, with publisher confirms) has it. Nothing answers 202 before its
event is in the broker; under load, batches grow by themselves and round trips per event
fall, without adding latency when the service is idle.
"""

from __future__ import annotations

import operator
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import dramatiq
import msgspec
import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import current_millis

from analytics.adapters import codec
from analytics.adapters.redis_clients import redis_client
from analytics.adapters.redis_packing import use_large_value_packer
from analytics.adapters.redis_task_status import RedisTaskStatusStore
from analytics.adapters.task_status_middleware import (
    STATUS_ON_ACK,
    STATUS_RECORDED,
    TaskStatusMiddleware,
)
from analytics.domain import ids
from analytics.domain.errors import QueueUnavailable
from analytics.domain.events import Event
from analytics.domain.validation import JSON_DECODE_ERRORS

if TYPE_CHECKING:
    from analytics.settings import Settings

QUEUES = ("high_priority", "aggregations", "notifications", "maintenance")
#: The actor name a dead letter whose envelope does not decode is shown, counted and
#: purged under (by its Redis id); it is never replayed: there is nothing to run.
UNDECODABLE_ACTOR = "(undecodable)"
PROCESS_EVENTS = "process_events"
PUBLISH_NOTIFICATIONS = "publish_notifications"  # its policy: entrypoints/policies.py


class MsgspecJSONEncoder(dramatiq.Encoder):
    """Dramatiq's JSON wire format, encoded and decoded by msgspec instead of ``json``.

    The bytes stay plain JSON, so producers and workers of either encoder read each other's
    messages; encoding a group's message is several times cheaper, and on the ingest path
    it runs once per group, in the leader's thread.
    """

    _encode = msgspec.json.Encoder().encode
    _decode = msgspec.json.Decoder().decode

    def encode(self, data: dict[str, Any]) -> bytes:
        return self._encode(data)

    def decode(self, data: bytes) -> dict[str, Any]:
        try:
            return self._decode(data)  # type: ignore[no-any-return]
        except JSON_DECODE_ERRORS as exc:
            raise dramatiq.DecodeError(
                f"failed to decode message {data[:200]!r}", data, exc
            ) from None


class RequeuePrefetched(dramatiq.Middleware):
    """At a clean shutdown, give back what a Redis consumer fetched but never handed out.

    Dramatiq's Redis consumer fetches up to ``prefetch`` messages at a time (each then
    sits in the worker's ack set) and yields them one by one; when the worker stops, the
    ones still in its cache are neither processed nor requeued, and wait for the worker's
    heartbeat to expire (15 s here) before another worker may take them. This hook, run by
    the consumer thread as it ends, requeues them at once. Should it fail, the heartbeat
    expiry still recovers them: nothing is lost either way.
    """

    def before_consumer_thread_shutdown(self, broker: dramatiq.Broker, thread: Any) -> None:
        consumer = getattr(thread, "consumer", None)
        cache = getattr(consumer, "message_cache", None)
        if not cache:
            return
        ids = []
        for data in cache:
            try:
                ids.append(dramatiq.Message.decode(data).options["redis_message_id"])
            except Exception:  # noqa: BLE001, S112 - undecodable: the heartbeat recovers it
                continue
        consumer.message_cache = []  # type: ignore[union-attr]
        if ids:
            try:
                broker.do_requeue(thread.queue_name, *ids)  # type: ignore[attr-defined]
            except redis.RedisError:
                pass


#: Set on a message whose retry could not be enqueued: its consumer leaves it unacknowledged.
KEEP_UNACKED = "_analytics_keep_unacked"


#: Set while a message is processed, cleared once every ``after_*`` hook has run.
UNSETTLED = "_analytics_unsettled"


class SettleGuard(dramatiq.Middleware):
    """Keeps a message whose processing ended before its outcome was recorded.

    dramatiq's worker acknowledges a message in a ``finally`` block, whatever happened
    before. A ``BaseException`` that escapes the worker's failure handling, such as the
    actor's time limit (``TimeLimitExceeded``, raised asynchronously in the worker thread)
    firing inside the failure's log line or inside an ``after_process_message`` hook,
    skips the hooks that were still to run, Retries' among them: the failed message was
    then acknowledged, neither retried nor dead-lettered (a QA chaos pass lost 8 and 58
    events with their 202 this way, the worker's log pipe blocked for minutes). First in
    the middleware list, this guard's ``before`` hook runs first and its ``after`` hooks
    last (dramatiq runs them in reverse), so a message without its mark cleared did not
    finish them, and the consumers keep it (:func:`kept_because`) like a message whose
    retry could not be enqueued.
    """

    def before_process_message(self, broker: Any, message: Any) -> None:
        setattr(message, UNSETTLED, True)

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: BaseException | None = None) -> None:  # fmt: skip
        setattr(message, UNSETTLED, False)

    def after_skip_message(self, broker: Any, message: Any) -> None:
        setattr(message, UNSETTLED, False)

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        broker.stopping = True  # read by the consumers: see ack_failed_while_stopping


def _message_id_of(body: bytes) -> object:
    """The ``message_id`` of an encoded envelope; None when it does not decode."""
    try:
        return dramatiq.Message.decode(body).message_id
    except dramatiq.DecodeError:
        return None


def ack_failed_while_stopping(broker: Any, message: Any, what: str) -> bool:
    """A Redis ack (or nack) that met a connection error: True when the worker is
    stopping, after saying so; the caller then leaves the message unacknowledged.

    dramatiq's worker thread retries a failed ack every 5 s until the broker answers, and
    the worker's stop waits for its threads: with Redis gone for good (``serve`` killed
    outright takes its Redis with it), the worker lingered for its whole shutdown timeout
    (10 minutes) retrying. While stopping, giving up is safe: the message stays in the
    dead consumer's ack set, which is requeued once its heartbeat is stale, and its
    processing is idempotent. (RabbitMQ's consumer drops the delivery tag on the first
    failure, so dramatiq's second try ends the loop; RabbitMQ redelivers what was not
    acknowledged when the connection closes.)"""
    if not getattr(broker, "stopping", False):
        return False
    import structlog  # noqa: PLC0415

    structlog.get_logger("analytics.broker").warning(
        f"{what} not sent: the broker is unreachable and the worker is stopping; the"
        " message stays unacknowledged and will be delivered again",
        message_id=message.message_id, queue=message.queue_name,
    )  # fmt: skip
    return True


def kept_because(message: Any) -> str | None:
    """Why a processed message must not be acknowledged (None: it may be)."""
    if getattr(message, KEEP_UNACKED, False):
        return "retry not enqueued"
    if getattr(message, UNSETTLED, False):
        return "processing ended before its outcome was recorded"
    return None


class DurableRetries(dramatiq.middleware.Retries):
    """dramatiq's Retries, for a retry that cannot be enqueued.

    Retries enqueues the retry (a delayed copy) in ``after_process_message``; when that
    enqueue fails (Redis stalled or down at that moment), dramatiq logs the error and the
    worker then acknowledges the original: the message was gone, neither retried nor
    dead-lettered (a QA chaos pass lost 16 events that had their 202 this way). Here the
    failure marks the message, and :class:`_StatusAckConsumer` leaves it in the ack set
    instead of acknowledging it: its orphan sweep (or, if the worker dies, the heartbeat
    reclaim) puts it back on the queue once Redis answers. On RabbitMQ the consumer of
    ``rabbitmq_broker`` gives it back instead (``basic_nack`` with requeue). If the failed enqueue did land
    after all (a stalled Redis runs what it had received), the event is processed twice,
    which the idempotent store absorbs.
    """

    @classmethod
    def like(cls, other: dramatiq.middleware.Retries) -> DurableRetries:
        return cls(max_retries=other.max_retries, min_backoff=other.min_backoff,
                   max_backoff=other.max_backoff, retry_when=other.retry_when)  # fmt: skip

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: BaseException | None = None) -> None:  # fmt: skip
        try:
            super().after_process_message(broker, message, result=result, exception=exception)
        except Exception:
            setattr(message, KEEP_UNACKED, True)
            raise  # dramatiq logs it; the consumer sees the mark


class StatusAckRedisBroker(RedisBroker):
    """Dramatiq's Redis broker; its consumer writes a processed message's ``succeeded``
    record in the same round trip as the ack (once :func:`carry_status_on_ack` has
    checked that the task-status records live in this Redis), instead of one round trip
    for the record and one for the ack. Everything else is ``RedisBroker``'s."""

    status_store: RedisTaskStatusStore | None = None
    #: Seconds between two looks for orphans in a consumer's ack set (_StatusAckConsumer).
    orphan_sweep_s: float = 10.0

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _StatusAckConsumer


class _StatusAckConsumer(_RedisConsumer):
    """Ack = one pipeline: the task-status record first, then dramatiq's ack (its dispatch
    script with the arguments ``RedisBroker._dispatch`` passes, dramatiq 2.x). A status
    failure is logged and never fails the ack (status is best effort, as in the
    middleware); a connection error raises ConnectionClosed like the base class, and
    dramatiq then retries the ack, record included (the record's update is idempotent).

    Orphans: dramatiq's fetch moves messages into this worker's ack set and returns them.
    When Redis dies after running (and fsyncing) a fetch but before its reply arrives,
    redis-py retries the call on the restarted server and the first fetch's messages stay
    in the ack set, never delivered; nothing requeues them while this worker heartbeats
    (seen in the redis-restart fault test: one message of five events held until the
    worker stopped). The same holds for what a consumer had prefetched when dramatiq
    restarts it after a connection error. So, every ``orphan_sweep_s`` and only when its
    cache is empty (everything it fetched is then delivered), the consumer compares the
    ack set with the messages it delivered and has not acknowledged; one missing from
    them in two sweeps in a row is requeued (dramatiq's requeue moves it back only if it
    is still in the ack set, atomically). A message a previous consumer of this process
    delivered and a worker thread still runs after two sweeps is then delivered twice:
    processing is idempotent.
    """

    broker: StatusAckRedisBroker

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._delivered: set[str] = set()  # Redis ids handed out, not yet acked or nacked
        self._suspects: set[str] = set()
        self._next_sweep = time.monotonic() + self.broker.orphan_sweep_s

    def __next__(self) -> Any:
        if not self.message_cache and time.monotonic() >= self._next_sweep:
            self._sweep_orphans()
        try:
            message = super().__next__()
        except dramatiq.DecodeError as exc:
            # dramatiq's consumer does not catch it: the consumer restarted, the sweep put
            # the message back, and it failed again every few seconds, forever.
            data = exc.data
            self._dead_letter_unusable(
                lambda body: body == data, None, f"not a message: {data[:120]!r}"
            )
            return None
        if message is None:
            return None
        rid = message.options.get("redis_message_id")
        if not isinstance(rid, str):
            # An envelope that decodes but lacks the id dramatiq's enqueue gives every
            # message (another producer wrote it): neither ack nor nack can name it, so
            # the consumer crashed on it and the sweep put it back, forever, like the above.
            self.queued_message_ids.discard(message.message_id)
            self._dead_letter_unusable(
                lambda body: _message_id_of(body) == message.message_id,
                message._message,
                "the envelope has no options.redis_message_id (not enqueued by dramatiq)",
            )
            return None
        self._delivered.add(rid)
        return message

    def _dead_letter_unusable(
        self, matches: Callable[[bytes], bool], message: dramatiq.Message[Any] | None, error: str
    ) -> None:
        """Move a fetched message no worker can run or settle (its envelope does not
        decode, or lacks its Redis id: a producer other than this service wrote it) to the
        dead letters, where ``analytics dlq`` shows it (and replays one that decodes, with
        an id of its own, or purges it). Fetched means in this consumer's ack set: found
        there by its bytes (``matches``), it is nacked (dramatiq's nack script: to ``.XQ``).
        ``message`` is the decoded envelope, if any: its failure is written into it first,
        so the dead letter says why."""
        import structlog  # noqa: PLC0415

        b = self.broker
        acks = f"{b.namespace}:__acks__.{b.broker_id}.{self.queue_name}"
        msgs = f"{b.namespace}:{self.queue_name}.msgs"
        log = structlog.get_logger("analytics.dead_letters")
        error_type = "DecodeError" if message is None else "MissingMessageId"
        try:
            held = [m.decode() for m in b.client.smembers(acks)]
            held = [rid for rid in held if rid not in self._delivered]
            bodies = b.client.hmget(msgs, held) if held else []  # one round trip, not one each
            for rid, body in zip(held, bodies, strict=True):
                if body is None or not matches(body):
                    continue
                failure = {"error_type": error_type, "error": error, "attempts": 1,
                           "permanent": True}  # fmt: skip
                if message is not None:
                    b.client.hset(msgs, rid, message.copy(options={"failure": failure}).encode())
                b.do_nack(self.queue_name, rid)
                # dramatiq's own nack hooks (the dead-letter counter) never saw it: they
                # get the envelope, or a stand-in when there is none.
                b.emit_after("nack", message or dramatiq.Message(
                    queue_name=self.queue_name, actor_name=UNDECODABLE_ACTOR, args=(),
                    kwargs={}, options={}, message_id=rid, message_timestamp=0,
                ))  # fmt: skip
                log.error("message dead-lettered", queue=self.queue_name, message_id=rid,
                          **failure)  # fmt: skip
                return
        except redis.RedisError as exc:  # the sweep or the next fetch meets it again
            log.warning("unusable message not dead-lettered yet", error=str(exc))
            return
        log.warning("unusable message not found in the ack set", error=error)

    def _sweep_orphans(self) -> None:
        self._next_sweep = time.monotonic() + self.broker.orphan_sweep_s
        b = self.broker
        key = f"{b.namespace}:__acks__.{b.broker_id}.{self.queue_name}"
        try:
            held = {m.decode() for m in b.client.smembers(key)}
            orphans = held - set(self._delivered)  # a copy: worker threads discard acks
            confirmed, self._suspects = orphans & self._suspects, orphans - self._suspects
            if confirmed:
                b.do_requeue(self.queue_name, *confirmed)
        except redis.RedisError:
            return  # the next sweep looks again
        if confirmed:
            import structlog  # noqa: PLC0415

            structlog.get_logger("analytics.broker").warning(
                "requeued messages fetched but never delivered",
                queue=self.queue_name, count=len(confirmed),
            )  # fmt: skip

    def ack(self, message: Any) -> None:
        try:
            self._ack(message)
        except dramatiq.errors.BrokerConnectionError:
            if not ack_failed_while_stopping(self.broker, message, "ack"):
                raise  # dramatiq tries again in 5 s
            self._forget(message)

    def _forget(self, message: Any) -> None:
        """This consumer no longer counts ``message`` as its own; it stays in the ack set."""
        self.queued_message_ids.discard(message.message_id)
        self._delivered.discard(message.options.get("redis_message_id"))

    def _ack(self, message: Any) -> None:
        reason = kept_because(message)
        if reason is not None:  # its retry was never enqueued, or its hooks never ran
            self._keep_unacked(message, reason)
            return
        update = getattr(message, STATUS_ON_ACK, None)
        store = self.broker.status_store
        if update is None or store is None:
            super().ack(message)
        else:
            try:
                self._ack_with_status(message, update, store)
            except redis.ConnectionError as e:
                raise dramatiq.errors.ConnectionClosed(e) from None
            finally:
                self.queued_message_ids.discard(message.message_id)
        # Only once acknowledged: while dramatiq retries a failed ack the message is still
        # in the ack set, and the orphan sweep must not take it for one.
        self._delivered.discard(message.options.get("redis_message_id"))

    def _keep_unacked(self, message: Any, reason: str) -> None:
        """Leave ``message`` in the ack set, no longer counted as delivered: two sweeps on,
        the orphan sweep requeues it (dramatiq's requeue script: only if still there)."""
        import structlog  # noqa: PLC0415

        self._forget(message)
        structlog.get_logger("analytics.broker").warning(
            f"{reason}; the message stays unacknowledged and will be requeued",
            message_id=message.message_id, queue=self.queue_name,
        )  # fmt: skip

    def nack(self, message: Any) -> None:
        update = getattr(message, STATUS_ON_ACK, None)  # not expected: failed after success
        if update is not None and self.broker.status_store is not None:
            _apply_quietly(self.broker.status_store, update)
        try:
            super().nack(message)
        except dramatiq.errors.BrokerConnectionError:
            if not ack_failed_while_stopping(self.broker, message, "nack"):
                raise
            self._forget(message)
            return
        self._delivered.discard(message.options.get("redis_message_id"))  # as in ack

    def _ack_with_status(self, message: Any, update: Any, store: RedisTaskStatusStore) -> None:
        missed = dispatch_with_status(
            self.broker, store, update, "ack", self.queue_name, message.options["redis_message_id"]
        )
        if missed is not None:  # acked; the record the usual way, best effort
            _apply_quietly(store, update)


def dispatch_with_status(
    broker: RedisBroker,
    store: RedisTaskStatusStore,
    update: Any,
    command: str,
    queue_name: str,
    *args: object,
) -> Exception | None:
    """Dramatiq's dispatch script ``command`` (``enqueue``, ``ack``) and a task-status
    ``update`` in one pipelined round trip, the record first.

    The script gets the same arguments as ``RedisBroker._dispatch`` (dramatiq 2.x) and then
    ``args``. A restarted Redis has forgotten both scripts: on ``NoScriptError`` from the
    dispatch both are loaded and the pipeline runs again (once; the dispatch did not run,
    the record is idempotent). The dispatch's error is raised; the record's is returned
    (None: recorded), for the caller's fallback, which finds the script loaded again.
    """
    b, dispatch = broker, broker.scripts["dispatch"]
    for attempt in (1, 2):
        pipe = b.client.pipeline(transaction=False)
        store.apply_in(pipe, update)
        pipe.evalsha(
            dispatch.sha, 1, b.namespace,
            command, current_millis(), queue_name, b.broker_id, b.heartbeat_timeout,
            b.dead_message_ttl, b._should_do_maintenance(command), b._max_unpack_size(),  # noqa: SLF001
            *args,
        )  # fmt: skip
        recorded, dispatched = pipe.execute(raise_on_error=False)
        if isinstance(dispatched, redis.exceptions.NoScriptError) and attempt == 1:
            b.client.script_load(dispatch.script)
            store.load_script()
            continue
        break
    if isinstance(dispatched, Exception):
        raise dispatched
    if not isinstance(recorded, Exception):
        return None
    if isinstance(recorded, redis.exceptions.NoScriptError):
        store.load_script()
    return recorded


def _apply_quietly(store: RedisTaskStatusStore, update: Any) -> None:
    try:
        store.apply(update)
    except Exception as exc:  # noqa: BLE001 - status is best effort, work is not
        import structlog  # noqa: PLC0415

        structlog.get_logger("analytics.task_status").warning(
            "task status not recorded", task_id=update.task_id, error=str(exc)
        )


def carry_status_on_ack(broker: dramatiq.Broker) -> bool:
    """Let ``broker``'s consumer write the ``succeeded`` records with its acks, when it is
    a :class:`StatusAckRedisBroker` whose task-status middleware keeps its records in the
    same Redis. True when done (then the middleware leaves those records to the ack)."""
    mw = _status_in_broker_redis(broker) if isinstance(broker, StatusAckRedisBroker) else None
    if mw is None:
        return False
    broker.status_store = mw.store
    mw.with_ack = True
    return True


def use_msgspec_encoder() -> None:
    """Dramatiq's encoder is process-wide; ours writes the same JSON bytes and also the
    group messages' raw event rows (``msgspec.Raw``), which the stock one cannot."""
    if not isinstance(dramatiq.get_encoder(), MsgspecJSONEncoder):
        dramatiq.set_encoder(MsgspecJSONEncoder())


def build_broker(
    settings: Settings, middleware: list[dramatiq.Middleware] | None = None
) -> dramatiq.Broker:
    """The broker chosen by settings. Redis is the default; ``stub`` is for unit tests."""
    use_msgspec_encoder()
    broker: dramatiq.Broker
    if settings.broker == "redis":
        broker = StatusAckRedisBroker(
            # Group messages are large: sent as they are, not copied by hiredis' packer.
            client=use_large_value_packer(redis_client(settings)),
            namespace=settings.namespace,
            heartbeat_timeout=int(settings.heartbeat_timeout_s * 1000),
            maintenance_chance=settings.broker_maintenance_chance,
            dead_message_ttl=settings.dead_message_ttl_s * 1000,
            middleware=middleware,
        )
    elif settings.broker == "rabbitmq":
        from analytics.adapters.rabbitmq_broker import KeepingRabbitmqBroker  # noqa: PLC0415

        broker = KeepingRabbitmqBroker(
            url=settings.rabbitmq_url, confirm_delivery=True, middleware=middleware
        )
    else:
        broker = StubBroker(middleware=middleware)
    from analytics.adapters.dead_letter_recorder import DeadLetterRecorder  # noqa: PLC0415

    if isinstance(broker, RedisBroker):
        broker.add_middleware(RequeuePrefetched())
    if not isinstance(broker, StubBroker):  # both consumers honour ``kept_because``
        broker.middleware[:] = [
            DurableRetries.like(m) if type(m) is dramatiq.middleware.Retries else m
            for m in broker.middleware
        ]
        broker.add_middleware(SettleGuard(), before=type(broker.middleware[0]))
    # ``after_*`` hooks run in reverse order: placed before Retries, it sees Retries' verdict.
    broker.add_middleware(DeadLetterRecorder(), before=dramatiq.middleware.Retries)
    for queue in QUEUES:
        broker.declare_queue(queue)
    return broker


def events_message(events: Sequence[Event]) -> dramatiq.Message[object]:
    """One ``process_events`` message carrying a group of events, with their correlation ids.

    The events are raw JSON rows inside the envelope (``codec.events_arg``): encoded once,
    never escaped as a string. Only :class:`MsgspecJSONEncoder` can encode such a message,
    and ``build_broker`` installs it; workers read this form and the older one (JSON text).
    """
    return _group_message([codec.encode_rows(events)], [_correlation_ids(events)])


def _correlation_ids(events: Sequence[Event]) -> set[str]:
    return set(map(_get_correlation_id, events))


_get_correlation_id = operator.attrgetter("correlation_id")


def _group_message(
    arrays: Sequence[bytes], id_sets: Sequence[set[str]]
) -> dramatiq.Message[object]:
    """The ``process_events`` message of JSON arrays of events (``codec.encode_rows``
    each), joined into one array with a single copy."""
    correlation_ids = sorted(set().union(*id_sets) - {""})
    return dramatiq.Message(
        queue_name="high_priority",
        actor_name=PROCESS_EVENTS,
        args=(msgspec.Raw(_join_arrays(arrays)),),
        kwargs={},
        options={"correlation_ids": correlation_ids[:50]},
        message_id=ids.uuid4_str(),  # dramatiq's default id costs a GIL release (ids.py)
    )


def _join_arrays(arrays: Sequence[bytes]) -> bytes:
    """``[a,b]`` and ``[c]`` -> ``[a,b,c]``: the elements of JSON arrays, in one array."""
    filled = [a for a in arrays if len(a) > 2]  # not "[]"
    if len(filled) <= 1:
        return filled[0] if filled else b"[]"
    return b"".join((b"[", b",".join([memoryview(a)[1:-1] for a in filled]), b"]"))


def notifications_message(events: Sequence[Event]) -> dramatiq.Message[object]:
    """One ``publish_notifications`` message for a group of newly stored events."""
    correlation_ids = sorted({e.correlation_id for e in events if e.correlation_id})
    return dramatiq.Message(
        queue_name="notifications",
        actor_name=PUBLISH_NOTIFICATIONS,
        args=(codec.events_arg(events),),
        kwargs={},
        options={"correlation_ids": correlation_ids[:50]},
    )


_WAITING, _DONE, _LEAD = 0, 1, 2


class _Slot:
    """One caller's events, the answer it waits for, and its part in the relay.

    ``_signal`` is a bare lock held from creation and released to wake the caller, once
    its answer is there (``_DONE``) or when it is handed the lead (``_LEAD``): the cheapest
    wake-up CPython has (a ``threading.Event`` costs a Condition and a waiter lock).
    """

    __slots__ = ("_signal", "correlation_ids", "encoded", "error", "events", "state", "task_id")

    def __init__(self, events: Sequence[Event]) -> None:
        self.events = events
        # Encoded by the caller's thread, before it queues: its events are still in the
        # CPU cache then, and the leader's send (which every other caller waits for) only
        # joins bytes instead of encoding a whole group (measured: 12 % of the API's CPU
        # under py-spy when the leader encoded the group).
        self.encoded = codec.encode_rows(events)
        self.correlation_ids = _correlation_ids(events)
        self._signal = threading.Lock()
        self._signal.acquire()
        self.state = _WAITING
        self.task_id: str | None = None
        self.error: BaseException | None = None

    def wait(self, timeout: float = -1) -> bool:
        """True once woken (done, or handed the lead); the signal is armed again."""
        return self.state == _DONE or self._signal.acquire(timeout=timeout)

    def finish(self, task_id: str | None = None, error: BaseException | None = None) -> None:
        self.task_id, self.error, self.state = task_id, error, _DONE
        self._release()

    def hand_lead(self) -> None:
        self.state = _LEAD
        self._release()

    def _release(self) -> None:
        if self._signal.locked():
            self._signal.release()


class GroupCommitQueue:
    """TaskQueue port over a Dramatiq broker; concurrent callers share one enqueue.

    Leader/follower, no thread of its own: a caller that finds nobody sending becomes the
    leader and sends everything pending as one message, its own events included; callers
    arriving meanwhile wait. When the leader's send returns, every caller of that group is
    woken with the message id, and if more callers are pending the oldest of them is woken
    to lead the next group. Each caller sleeps at most once; a dedicated flusher thread
    would add two sleeps per group (waiting for work, waiting for Redis), and on these VMs
    every sleep and wake-up is a GIL hand-over that costs tens of microseconds.

    ``send`` enqueues one message and returns it as enqueued (default ``broker.enqueue``;
    on Redis, :class:`RedisEnqueuer` adds the task-status record to the same round trip).
    """

    def __init__(
        self,
        broker: dramatiq.Broker,
        *,
        max_events: int = 2000,
        timeout_s: float = 5.0,
        send: Callable[[dramatiq.Message[Any]], dramatiq.Message[Any]] | None = None,
    ) -> None:
        use_msgspec_encoder()  # its messages carry msgspec.Raw rows, whatever the broker
        self.broker = broker
        self.send = send or broker.enqueue
        self.max_events = max_events
        self.timeout_s = timeout_s
        self._pending: list[_Slot] = []
        self._lock = threading.Lock()
        self._leading = False

    def enqueue_events(self, events: Sequence[Event]) -> str:
        slot = _Slot(events)
        with self._lock:
            self._pending.append(slot)
            lead = not self._leading
            self._leading = True
        if lead:
            self._lead(slot)
        while slot.state != _DONE:
            if not slot.wait(self.timeout_s):
                with self._lock:  # the signal may come right now: decide under the lock
                    if slot.state == _WAITING and slot in self._pending:
                        self._pending.remove(slot)  # never sent: safe to refuse
                        raise QueueUnavailable(NOT_SENT, retry_after=5, public=NOT_SENT)
                # In flight (its send is bounded by the client's socket timeout), or woken
                # between the timeout and the lock: wait for the signal, which is certain.
                slot.wait()
            if slot.state == _LEAD:
                self._lead(slot)
        if slot.error is not None:
            raise _unconfirmed(slot.error) from slot.error
        assert slot.task_id is not None
        return slot.task_id

    def _lead(self, own: _Slot) -> None:
        """Send groups until ``own`` is answered, then pass the lead on (or put it down)."""
        group: list[_Slot] = []
        try:
            while True:
                with self._lock:
                    group = self._take()
                if group:
                    self._send(group)
                with self._lock:
                    if own.state == _DONE or not group:
                        self._pass_lead()
                        return
        except BaseException as exc:  # e.g. the worker aborting: nobody may wait forever
            for slot in group:
                if slot.state != _DONE:
                    slot.finish(error=exc)
            with self._lock:
                if own in self._pending:  # never sent, and its caller is leaving with exc
                    self._pending.remove(own)
                self._pass_lead()
            raise

    def _pass_lead(self) -> None:
        """Under ``_lock``: wake the oldest pending caller to send the next group."""
        if self._pending:
            self._pending[0].hand_lead()
        else:
            self._leading = False

    def _take(self) -> list[_Slot]:
        taken, count = [], 0
        while self._pending and (
            not taken or count + len(self._pending[0].events) <= self.max_events
        ):
            slot = self._pending.pop(0)
            taken.append(slot)
            count += len(slot.events)
        return taken

    def _send(self, group: list[_Slot]) -> None:
        try:
            message = self.send(
                _group_message([s.encoded for s in group], [s.correlation_ids for s in group])
            )
        except Exception as exc:  # noqa: BLE001 - every waiter hears about it
            for slot in group:
                slot.finish(error=exc)
            return
        for slot in group:
            slot.finish(message.message_id)


NOT_SENT = "the broker did not confirm in time; nothing was queued"
UNCONFIRMED = (
    "the broker did not confirm the enqueue; send the event again with the same event_id: "
    "it is stored once"
)


def _unconfirmed(exc: BaseException) -> QueueUnavailable:
    """A failed send: its outcome is unknown once the command may have left (a stalled
    Redis runs it when it wakes), so the client is told how to retry safely; the
    broker's own words (its address) go to the log only."""
    return QueueUnavailable(f"the broker did not confirm the enqueue ({exc})", public=UNCONFIRMED)


class RedisEnqueuer:
    """``RedisBroker.enqueue`` in one round trip, the task-status record included.

    The broker's own ``enqueue`` runs dramatiq's dispatch script, then the task-status
    middleware writes the ``queued`` record in a second round trip. Here both go in one
    pipeline: the record first, then the dispatch script with the same arguments as
    ``RedisBroker.enqueue`` (dramatiq 2.x), and ``after_enqueue`` is told the record is
    written. A record without its message can only come from a failed send, whose id no
    client received; it expires with its TTL. ``tests/integration/test_redis_enqueuer.py``
    checks that a real worker consumes what this sends and that the record is there.
    """

    def __init__(self, broker: RedisBroker, status: TaskStatusMiddleware) -> None:
        self.broker = broker
        self.status = status
        self.store: RedisTaskStatusStore = status.store  # type: ignore[assignment]

    def __call__(self, message: dramatiq.Message[Any]) -> dramatiq.Message[Any]:
        b = self.broker
        message = message.copy(options={"redis_message_id": ids.uuid4_str()})
        b.emit_before("enqueue", message, None)
        update = self.status.queued_update(message)
        missed = dispatch_with_status(
            b, self.store, update, "enqueue", message.queue_name,
            message.options["redis_message_id"], message.encode(),
        )  # fmt: skip
        if missed is not None:  # the message is queued; its record is not
            b.emit_after("enqueue", message, None)  # the middleware writes it the usual way
        else:
            b.emit_after("enqueue", message.copy(options={STATUS_RECORDED: True}), None)
        return message

    @classmethod
    def for_broker(cls, broker: dramatiq.Broker) -> RedisEnqueuer | None:
        """One for ``broker`` when it is a RedisBroker whose task-status middleware keeps
        its records in the same Redis; None otherwise (then ``broker.enqueue`` is used)."""
        mw = _status_in_broker_redis(broker)
        return cls(broker, mw) if mw is not None else None


def _status_in_broker_redis(broker: dramatiq.Broker) -> TaskStatusMiddleware | None:
    """``broker``'s task-status middleware when ``broker`` is a RedisBroker and the
    middleware keeps its records in the same Redis (so both fit in one pipeline)."""
    if not isinstance(broker, RedisBroker):
        return None
    mw = next((m for m in broker.middleware if isinstance(m, TaskStatusMiddleware)), None)
    if mw is None or not isinstance(mw.store, RedisTaskStatusStore):
        return None
    return mw if _server(mw.store.client) == _server(broker.client) else None


def _server(client: redis.Redis) -> tuple[object, ...]:
    kw = client.connection_pool.connection_kwargs
    return (kw.get("host"), kw.get("port"), kw.get("path"), kw.get("db", 0))


class DirectQueue:
    """One message per call, no grouping: the baseline the benchmark compares against."""

    def __init__(self, broker: dramatiq.Broker) -> None:
        self.broker = broker

    def enqueue_events(self, events: Sequence[Event]) -> str:
        try:
            return self.broker.enqueue(events_message(events)).message_id
        except Exception as exc:  # noqa: BLE001
            raise _unconfirmed(exc) from exc
