"""Circuit breakers: fail fast while a dependency is down, probe it after a cool-down.

Why not ``pybreaker``: its ``call`` holds one lock for the whole duration of the wrapped
call, so every storage read of every API thread would queue behind one slow call; and it
reads the wall clock. This class holds its lock only to change state, takes a monotonic
clock (tests drive it), and lets exactly one trial call through when half-open.

States (the usual ones):

- ``closed``: calls pass. ``failure_threshold`` failures in a row (an exception the
  breaker counts: the dependency's own errors and timeouts, never a domain error such as
  a bad query) open it.
- ``open``: the failure that opens it, and every call while it stays open, fail at once with the ``on_open`` error (``CircuitOpen`` subclasses),
  which carries the seconds left until the cool-down (``reset_timeout_s``) is over.
- ``half_open``: after the cool-down, one trial call passes (others keep failing fast).
  Success closes the breaker; failure opens it for another cool-down.

Timeouts count as failures because every client below has its own bounded timeout
(SQLite busy timeout, Redis socket timeout, botocore connect/read timeouts, the ingest
queue's ``enqueue_timeout_s``) and raises when it fires.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Any, NoReturn, TypeVar

from analytics.domain.errors import CircuitOpen, DomainError

T = TypeVar("T")


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


#: Gauge values of the states (``analytics_circuit_breaker_state``).
STATE_VALUES = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}

Listener = Callable[["CircuitBreaker", State, State], None]


#: ``scheme://user:password@`` in an error text: the password is not for the logs.
_CREDENTIALS = re.compile(r"(://[^/@\s:]*:)[^/@\s]*@")


def counts_as_failure(exc: BaseException) -> bool:
    """Infrastructure errors and timeouts count; input errors (the caller's fault) do not."""
    return isinstance(exc, Exception) and not isinstance(exc, DomainError | CircuitOpen)


class CircuitBreaker:
    """One breaker per dependency, shared by the threads of a process."""

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_timeout_s: float = 30.0,
        on_open: Callable[[str, float], CircuitOpen] = CircuitOpen,
        is_failure: Callable[[BaseException], bool] = counts_as_failure,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_timeout_s <= 0:
            raise ValueError("reset_timeout_s must be positive")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.on_open = on_open
        self.is_failure = is_failure
        self.clock = clock
        self._state = State.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial = False
        self._lock = threading.Lock()
        self._inside = threading.local()  # depth of guarded calls on this thread
        self._listeners: list[Listener] = []
        # Cumulative counts (metrics follow them; the breaker stays free of prometheus).
        self.calls = 0
        self.failures = 0
        self.rejected = 0
        self.opened = 0
        self.last_error: str | None = None  # the latest failure, for the line that says it opened

    # --- observation ----------------------------------------------------------------
    @property
    def state(self) -> State:
        return self._state

    def retry_after(self) -> float:
        """Seconds until a trial call may pass (0 when not open)."""
        if self._state is not State.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.reset_timeout_s - self.clock())

    def add_listener(self, listener: Listener) -> None:
        """``listener(breaker, old, new)`` on every transition (called outside the lock)."""
        self._listeners.append(listener)

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self._state.value,
            "consecutive_failures": self._failures,
            "failure_threshold": self.failure_threshold,
            "reset_timeout_s": self.reset_timeout_s,
            "retry_after_s": round(self.retry_after(), 3),
            "opened": self.opened,
            "rejected": self.rejected,
        }

    def inside(self) -> bool:
        """Is this thread inside a call guarded by this breaker (a unit of work's)?"""
        return bool(getattr(self._inside, "depth", 0))

    # --- protocol -------------------------------------------------------------------
    def before_call(self) -> bool:
        """Let the call pass, or raise the breaker's ``CircuitOpen`` error. True when the
        call is the half-open trial (its outcome then frees the trial slot)."""
        changed, trial = None, False
        with self._lock:
            self.calls += 1
            if self._state is State.OPEN:
                left = self._opened_at + self.reset_timeout_s - self.clock()
                if left > 0:
                    self.rejected += 1
                    raise self.on_open(self.name, left)
                changed = (self._state, State.HALF_OPEN)
                self._state = State.HALF_OPEN
                self._trial = trial = True
            elif self._state is State.HALF_OPEN:
                if self._trial:  # one trial at a time; the others keep failing fast
                    self.rejected += 1
                    raise self.on_open(self.name, 0.0)
                self._trial = trial = True
        if changed:
            try:
                self._notify(*changed)  # a listener logs: an interrupt can land in there
            except BaseException:
                self.release(trial)  # the call never ran: its slot must not stay taken
                raise
        return trial

    def record_success(self) -> None:
        changed = None
        with self._lock:
            self.last_error = None
            self._failures = 0
            self._trial = False
            if self._state is not State.CLOSED:
                changed = (self._state, State.CLOSED)
                self._state = State.CLOSED
        if changed:
            self._notify(*changed)

    def record_failure(self, error: str | None = None) -> bool:
        """Count a failure; True when it opened the breaker (a run reached the threshold,
        or the half-open trial failed). ``error``: what failed, for the line that says
        the breaker opened (credentials in a URL are masked)."""
        if error is not None:
            self.last_error = _CREDENTIALS.sub(r"\1***@", error)[:500]
        changed = None
        with self._lock:
            self.failures += 1
            self._failures += 1
            self._trial = False
            if self._state is State.HALF_OPEN or (
                self._state is State.CLOSED and self._failures >= self.failure_threshold
            ):
                changed = (self._state, State.OPEN)
                self._state = State.OPEN
                self._opened_at = self.clock()
                self.opened += 1
        if changed:
            self._notify(*changed)
        return changed is not None

    def release(self, trial: bool) -> None:
        """The call ended without a verdict (e.g. interrupted): free the trial slot, if
        the call was the trial. A call let in while the breaker was closed, interrupted
        after it had opened and gone half-open, freed the running trial's slot, and a
        second trial got in (a review)."""
        if trial:
            with self._lock:
                self._trial = False

    def record(self, exc: BaseException | None, trial: bool = False) -> bool:
        """Record a call's outcome; True when this failure opened the breaker. ``trial``:
        what :meth:`before_call` returned for it."""
        if exc is None or not self.is_failure(exc):
            if exc is None or isinstance(exc, Exception):
                self.record_success()  # the dependency answered (perhaps "bad request")
            else:
                self.release(trial)
            return False
        return self.record_failure(f"{type(exc).__name__}: {exc}")

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` under the breaker. The failure that opens it is raised as the
        breaker's open error (the real one chained as its cause), like every call while
        it stays open, so callers need one ``except`` for "this dependency is out".

        The same protocol as :meth:`guard`, without a generator: this wraps every ingest
        request's enqueue."""
        inside = self._inside
        if getattr(inside, "depth", 0):
            with self.guard():
                return fn(*args, **kwargs)
        trial = self.before_call()
        inside.depth = 1
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            inside.depth = 0
            self._raise_recorded(exc, trial)
        inside.depth = 0
        self.record_success()
        return result

    @contextmanager
    def guard(self) -> Iterator[None]:
        """A guarded call. Nested guards of the same breaker on the same thread (a
        repository call inside a guarded transaction) pass through: the outermost one
        decides and records, so a half-open trial is not refused by its own parts."""
        depth = getattr(self._inside, "depth", 0)
        if depth:
            self._inside.depth = depth + 1
            try:
                yield
            finally:
                self._inside.depth = depth
            return
        trial = self.before_call()
        self._inside.depth = 1
        try:
            yield
        except BaseException as exc:
            self._inside.depth = 0
            self._raise_recorded(exc, trial)
        self._inside.depth = 0
        self.record_success()

    def _raise_recorded(self, exc: BaseException, trial: bool) -> NoReturn:
        """Record ``exc`` as the outermost call's outcome and raise it, or the breaker's
        open error when it opened the breaker."""
        if self.record(exc, trial):
            raise self.on_open(self.name, self.reset_timeout_s) from exc
        raise exc

    def _notify(self, old: State, new: State) -> None:
        for listener in list(self._listeners):
            try:
                listener(self, old, new)
            except Exception:  # noqa: BLE001, S110 - an observer must never break a call
                pass


class BreakerRegistry:
    """The breakers of one process, by name: what metrics and ``/health/detailed`` show."""

    def __init__(self) -> None:
        self._breakers: dict[str, CircuitBreaker] = {}

    def add(self, breaker: CircuitBreaker) -> CircuitBreaker:
        self._breakers[breaker.name] = breaker
        return breaker

    def get(self, name: str) -> CircuitBreaker | None:
        return self._breakers.get(name)

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(list(self._breakers.values()))

    def __len__(self) -> int:
        return len(self._breakers)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {b.name: b.snapshot() for b in self}

    def open_names(self) -> list[str]:
        return [b.name for b in self if b.state is not State.CLOSED]
