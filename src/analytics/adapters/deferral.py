"""Workers defer, never drop, a message whose storage breaker is open.

Every actor declared on the broker (``after_declare_actor``) is wrapped by
:func:`deferring`, which turns a ``CircuitOpen`` into :class:`Deferred`, a
``dramatiq.Retry``. :class:`DeferralMiddleware` sits after ``Retries`` in the broker's
list, so its ``after_process_message`` runs first (Dramatiq calls "after" hooks in
reverse order): it sets the delay (exponential in the number of deferrals, from the
breaker's cool-down up to ``breaker_defer_max_s``, with jitter) and gives back the retry
that ``Retries`` is about to take. A deferral therefore never uses up the actor's
``max_retries``: a message waits out a storage outage of any length and is not
dead-lettered for it, and once storage is back its retry budget is intact.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import Any, TypeVar

import dramatiq
import structlog

from analytics.domain.errors import CircuitOpen

log = structlog.get_logger("analytics.worker")
F = TypeVar("F", bound=Callable[..., Any])


class Deferred(dramatiq.Retry):
    """Retry later without counting a retry: a dependency's breaker is open."""

    def __init__(self, cause: CircuitOpen) -> None:
        super().__init__(str(cause))
        self.breaker = cause.breaker
        self.retry_after_s = cause.retry_after_s


def deferring(fn: F) -> F:
    """Actor decorator: an open breaker defers the message instead of failing it."""

    if getattr(fn, "defers_on_open", False):
        return fn

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CircuitOpen as exc:
            raise Deferred(exc) from exc

    wrapper.defers_on_open = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


class DeferralMiddleware(dramatiq.Middleware):
    """Sets the delay of a :class:`Deferred` message and keeps its retry budget."""

    def __init__(self, *, base_s: float, max_s: float) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.deferred = 0

    def after_declare_actor(self, broker: dramatiq.Broker, actor: Any) -> None:
        """Every actor of the broker defers on an open breaker, whoever declared it
        (called for actors declared before this middleware was added, too)."""
        actor.fn = deferring(actor.fn)

    def delay_ms(self, deferrals: int, retry_after_s: float) -> int:
        base = max(self.base_s, retry_after_s)
        seconds = min(self.max_s, base * 2 ** min(deferrals, 30))
        return int(seconds * random.uniform(1.0, 1.25) * 1000)  # noqa: S311 - jitter only

    def after_process_message(
        self, broker: dramatiq.Broker, message: Any, *, result: object = None,
        exception: BaseException | None = None,
    ) -> None:  # fmt: skip
        if not isinstance(exception, Deferred):
            return
        deferrals = int(message.options.get("deferrals", 0))
        if exception.retry_after_s <= 0:
            # Half-open: another call is the trial right now and will likely close the
            # breaker; come back within one cool-down, without growing the backoff.
            exception.delay = int(self.base_s * random.uniform(0.2, 1.0) * 1000)  # noqa: S311
        else:
            exception.delay = self.delay_ms(deferrals, exception.retry_after_s)
            message.options["deferrals"] = deferrals + 1
        # Retries is next: it adds one to "retries" and compares the old value with
        # max_retries. Taking one off first makes a deferral cost nothing.
        message.options["retries"] = int(message.options.get("retries", 0)) - 1
        self.deferred += 1
        log.warning(
            "message deferred: breaker open",
            breaker=exception.breaker,
            message_id=message.message_id,
            deferrals=deferrals + 1,
            delay_ms=exception.delay,
        )


def install(broker: dramatiq.Broker, *, base_s: float, max_s: float) -> DeferralMiddleware:
    """Append once (after ``Retries``, hence called before it in "after" hooks)."""
    for mw in broker.middleware:
        if isinstance(mw, DeferralMiddleware):
            return mw
    mw = DeferralMiddleware(base_s=base_s, max_s=max_s)
    broker.add_middleware(mw)
    return mw
