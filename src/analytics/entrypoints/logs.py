"""structlog configuration: JSON lines, correlation id from a context variable.

stdlib logging (dramatiq, gunicorn) is routed through the same processors so every line
a process writes is JSON.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import multiprocessing.connection
import os
import sys
import threading
import time
import weakref
from typing import Any, TextIO

import msgspec
import structlog

_SECRET_KEYS = ("authorization", "x-api-key", "api_key", "password", "secret", "token")


@functools.lru_cache(maxsize=4096)
def _is_secret(key: str) -> bool:
    """Whether a key names a secret; keys come from code, so the set is small and the
    answer is kept (the scan ran for every key of every line: a tenth of a request).

    A name ending in ``_id`` is an identifier, never the secret: ``api_key_id`` (which
    key made the request, in every line of an authenticated request) must stay readable.
    """
    lowered = key.lower()
    return not lowered.endswith("_id") and any(s in lowered for s in _SECRET_KEYS)


def _redact(_: object, __: str, event_dict: dict[str, object]) -> dict[str, object]:
    for key in list(event_dict):
        if _is_secret(key):
            event_dict[key] = "[redacted]"
    return event_dict


# A value (or key) JSON has no type for is written as its ``repr``: no line is dropped.
_json = msgspec.json.Encoder(enc_hook=repr)


def _render_json(_: object, __: str, event_dict: dict[str, object]) -> str:
    """One compact JSON line, encoded by msgspec: a quarter of the stdlib ``json`` cost
    on an access line, which every request writes."""
    return _json.encode(event_dict).decode()


RESULT_WARNING = "returned a value that is not None"


def quiet_result_warning(logger: logging.Logger) -> None:
    """Drop dramatiq's warning for an actor that returns a value without the Results
    middleware, before it becomes a log record.

    Our actors' return values feed the task-status record and the task metrics, so
    dramatiq's worker warns on every message. A handler filter dropped the line, but only
    after the record was built: 3-4 % of the worker's CPU under load (py-spy). The
    worker thread's logger is wrapped instead; every other warning passes unchanged.
    """
    if getattr(logger.warning, "quiets_result_warning", False):
        return
    warning = logger.warning

    def filtered(msg: object, *args: object, **kwargs: object) -> None:
        if isinstance(msg, str) and RESULT_WARNING in msg:
            return
        warning(msg, *args, **kwargs)  # type: ignore[arg-type]

    filtered.quiets_result_warning = True  # type: ignore[attr-defined]
    logger.warning = filtered  # type: ignore[method-assign]


class SerialStream:
    """A text stream whose writes are serialized by one lock, whoever writes.

    structlog's writer and the logging handler each hold a lock of their own, and both
    write to ``sys.stderr``. In a dramatiq worker process that is a ``StreamablePipe``,
    which sends every write as one length-prefixed frame to the master (two ``write``
    calls above 16 KiB); two threads writing at once interleaved their frames, the
    master's log reader then waited for a frame of gigabytes, the pipe filled, and every
    thread that logged blocked (a QA chaos pass: a worker hung for minutes, and a time
    limit firing in it lost messages). One lock for every writer of the process keeps a
    line one frame.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._after_fork()
        _SERIAL_STREAMS.add(self)

    def _after_fork(self) -> None:
        """A fresh lock in a forked child: a thread of the parent that was writing when
        the process forked holds the copied one for ever (as logging's handlers do)."""
        # Re-entrant, and taken in one C call: a signal handler that logs (dramatiq's
        # SIGTERM handler does) runs in the thread it interrupts, and with a plain lock
        # it waited for ever on the lock its own thread held. Keeping an owner beside a
        # plain lock left windows (inside flush(), and between taking the lock and
        # noting the owner) where it still did (a review, reproduced with SIGALRM).
        self._lock = threading.RLock()
        self._writing = False  # a frame is being written (by the lock's holder)
        self._deferred: list[str] = []

    def write(self, text: str) -> int:
        with self._lock:
            if self._writing:
                # A signal handler logging in the middle of this thread's own write:
                # writing now would cut the frame being written in two. It goes out
                # right after that frame.
                self._deferred.append(text)
                return len(text)
            self._writing = True
            try:
                written = self.stream.write(text)
                while self._deferred:
                    self.stream.write(self._deferred.pop(0))
                return written
            finally:
                self._writing = False

    def flush(self) -> None:
        with self._lock:
            if not self._writing:  # inside this thread's own write: nothing half-written
                self.stream.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, ...
        return getattr(self.stream, name)


_SERIAL_STREAMS: weakref.WeakSet[SerialStream] = weakref.WeakSet()
os.register_at_fork(after_in_child=lambda: [s._after_fork() for s in _SERIAL_STREAMS])


def serial_stderr() -> SerialStream:
    """``sys.stderr`` made a :class:`SerialStream` (once), and ``sys.stdout`` with it when
    both are the same stream (dramatiq's worker processes: one pipe for both)."""
    current = sys.stderr
    if isinstance(current, SerialStream):
        return current
    serial = SerialStream(current)
    if sys.stdout is current:
        sys.stdout = serial  # type: ignore[assignment]
    sys.stderr = serial  # type: ignore[assignment]
    return serial


def drain_log_pipe_when_orphaned(interval_s: float = 0.5) -> threading.Thread | None:
    """In a dramatiq worker process: once its master is gone, read the process's own log
    pipe and write what arrives to its stderr file descriptor (serve's log, the terminal).

    A worker process logs through a pipe that the master reads. dramatiq's children
    inherit the pipe's read end too, so with the master killed outright the writes
    neither fail nor drain: the pipe filled, every thread that logged blocked (its
    graceful stop among them, on "worker process stopping"), and the process stayed,
    heartbeating and holding up to 32 prefetched messages, accepted events never stored
    (QA: 4 of 7 kills of the worker master under load). None when this process does not
    log through such a pipe (the master, a plain process) or the read end is not here."""
    stream = getattr(sys.stderr, "stream", sys.stderr)
    pipe = getattr(stream, "pipe", None)  # dramatiq's StreamablePipe: its Connection
    if pipe is None or not sys.platform.startswith("linux"):
        return None
    try:
        write_fd = pipe.fileno()
        inode = os.readlink(f"/proc/self/fd/{write_fd}")
        read_fd = next(
            fd for fd in map(int, os.listdir("/proc/self/fd"))
            if fd != write_fd and _same_pipe(fd, inode)
            and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        )  # fmt: skip
    except (OSError, StopIteration, ValueError):
        return None
    master = os.getppid()

    def drain() -> None:
        while os.getppid() == master:
            time.sleep(interval_s)
        reader = multiprocessing.connection.Connection(read_fd, writable=False)
        while True:
            try:
                data = reader.recv_bytes()
            except (EOFError, OSError):
                return
            try:
                os.write(2, data)
            except OSError:
                pass  # nowhere to write: the pipe still drains, the threads go on

    thread = threading.Thread(target=drain, name="log-pipe-drain", daemon=True)
    thread.start()
    return thread


def _same_pipe(fd: int, inode: str) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == inode
    except OSError:
        return False


def _short_messages(record: logging.LogRecord) -> bool:
    """A dramatiq message in a log line (``Failed to process message %s``, retries,
    dead letters) as its actor and id: its text repeats the arguments, a group of events
    (up to hundreds of KB) with their user and session ids and metadata, on every failure.
    Short ones too: a log is no place for a user's events (QA); ``analytics dlq show``
    and the task status name them by id."""
    args = record.args
    if isinstance(args, tuple) and any(hasattr(a, "message_id") for a in args):
        record.args = tuple(_message_label(a) if hasattr(a, "message_id") else a for a in args)
    return True


class _Throttle(logging.Filter):
    """At most one record per logger and message text (before its arguments) every
    ``every_s`` from the loggers under ``prefix``, and none below WARNING.

    pika writes a dozen lines, several with a traceback, for each reconnect that fails,
    and dramatiq's consumers and the API's threads each try again within seconds: 1,374
    lines in 50 s of a RabbitMQ outage (QA). What the outage means is said by the service's
    own lines (``dependency unavailable``, the breaker's, dramatiq's consumer restarts);
    pika's first words on each kind of failure stay, once per ``every_s``.
    """

    def __init__(self, prefix: str, every_s: float = 10.0) -> None:
        super().__init__()
        self.prefix, self.every_s = prefix, every_s
        self._last: dict[tuple[str, str], float] = {}  # pika's message texts: a few dozen
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefix):
            return True
        if record.levelno < logging.WARNING:
            return False
        key, now = (record.name, str(record.msg)), time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self.every_s) < self.every_s:
                return False
            self._last[key] = now
        return True


def _message_label(message: Any) -> str:
    return f"{message.actor_name}(...) id={message.message_id}"


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: structlog.types.Processor = (
        _render_json
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    stream = serial_stderr()  # every writer of this process, one line at a time
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.WriteLoggerFactory(stream),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.addFilter(_short_messages)
    if logging.getLevelName(level) > logging.DEBUG:  # at DEBUG everything, pika's too
        handler.addFilter(_Throttle("pika"))
        logging.getLogger("pika").setLevel(logging.WARNING)  # INFO records not even built
    else:
        logging.getLogger("pika").setLevel(logging.NOTSET)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    quiet_result_warning(logging.getLogger("dramatiq.worker.WorkerThread"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Python's warnings (a library's UserWarning, say) as records of "py.warnings": JSON
    # lines too, instead of two lines of text on stderr.
    logging.captureWarnings(True)
