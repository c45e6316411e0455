"""Log lines from many threads of a dramatiq worker process reach the master whole.

dramatiq's worker processes write their output to a ``StreamablePipe``: each ``write`` is
one length-prefixed frame on a multiprocessing connection, two ``write`` calls for a frame
above 16 KiB. structlog's writer and the logging handler each had a lock of their own, so
two threads could interleave their frames; the master's reader then read a length out of
a line's bytes, waited for gigabytes, the pipe filled and every thread that logged blocked
(a QA chaos pass: a worker hung for minutes; a time limit firing in it lost messages). The
child here is set up as dramatiq sets up a worker process, then logs large failure lines
through logging, structlog lines and plain writes to stderr from several threads at once; the
parent reads the frames as dramatiq's ``watch_logs`` does. Every frame must be whole JSON
lines, and a frame's length must be one that was written.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection

import pytest
import structlog
from dramatiq.compat import StreamablePipe

from analytics.entrypoints.logs import configure_logging
from tests.support import child_env

pytestmark = pytest.mark.integration

LINES_PER_THREAD = 60
BIG = "x" * 60_000  # a failure line with a whole group of events in it: above 16 KiB


def _child(pipe: Connection) -> None:
    stream = StreamablePipe(pipe)
    sys.stdout = sys.stderr = stream  # as dramatiq's setup_worker_logging does
    logging.basicConfig(level=logging.INFO, stream=stream)
    configure_logging("INFO", "json")
    std, log = logging.getLogger("dramatiq.worker.WorkerThread"), structlog.get_logger("t")

    def failures() -> None:
        for i in range(LINES_PER_THREAD):
            std.error("Failed to process message %s with unhandled exception.", f"{i}{BIG}")

    def events(n: int) -> None:
        for i in range(LINES_PER_THREAD):
            log.info("stored", thread=n, i=i, pad=BIG[: 5_000 * (i % 5)])

    def writes() -> None:  # as a traceback or a warning reaches stderr: plain writes
        for i in range(LINES_PER_THREAD):
            sys.stderr.write(json.dumps({"event": "write", "i": i, "pad": BIG[:20_000]}) + "\n")

    threads = [threading.Thread(target=failures), threading.Thread(target=writes),
               *(threading.Thread(target=events, args=(n,)) for n in range(3))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pipe.close()


def test_log_lines_from_many_threads_arrive_as_whole_frames() -> None:
    ctx = multiprocessing.get_context("fork")
    read, write = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(write,))
    child.start()
    write.close()
    frames, lines = 0, 0
    try:
        while read.poll(60):  # a deadline against a hang, not a timing assertion
            try:
                data = read.recv_bytes(maxlength=1_000_000)  # a corrupt length is larger
            except EOFError:
                break
            frames += 1
            for line in data.decode().splitlines():
                json.loads(line)  # raises on a line cut or spliced by another frame
                lines += 1
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    assert lines == 5 * LINES_PER_THREAD, f"{lines} whole lines in {frames} frames"


def test_a_child_forked_while_a_thread_writes_can_write() -> None:
    """The lock that serializes a process's stderr is made anew in a forked child: a
    thread of the parent that was writing at the fork would hold the copied one for
    ever, and the child's first log line would hang (gunicorn forks with ``os.fork``)."""
    configure_logging("INFO", "json")
    serial = sys.stderr
    serial._lock.acquire()  # type: ignore[attr-defined] - as a writer caught by the fork
    try:
        pid = os.fork()
        if pid == 0:  # the child: one line, then out, whatever happens
            try:
                structlog.get_logger("t").info("from the child")
            finally:
                os._exit(0)
        deadline = time.monotonic() + 30  # against the hang, not a timing assertion
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if done[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    finally:
        serial._lock.release()  # type: ignore[attr-defined]
    assert done[0] == pid, "the child's log line hung on the lock it inherited"


def test_a_signal_handler_logging_inside_a_write_neither_deadlocks_nor_cuts_the_frame() -> None:
    """dramatiq's SIGTERM handler logs. Arriving while the main thread was inside a write
    (a worker whose master was gone, its pipe full: the write waits for the drain thread),
    it waited for the stream's lock its own thread held: the process hung for ever (found
    orphaned after a test run). The handler's line now goes out after the interrupted one."""
    from analytics.entrypoints.logs import SerialStream  # noqa: PLC0415

    class Interrupted:
        """A stream whose first write is interrupted by a "signal handler" that logs."""

        def __init__(self) -> None:
            self.frames: list[str] = []
            self.serial: SerialStream | None = None

        def write(self, text: str) -> int:
            if not self.frames and self.serial is not None:
                self.serial.write("from the handler\n")  # the handler runs mid-write
                self.serial.flush()
            self.frames.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    inner = Interrupted()
    serial = SerialStream(inner)  # type: ignore[arg-type]
    inner.serial = serial
    done = threading.Event()
    writer = threading.Thread(target=lambda: (serial.write("the line\n"), done.set()), daemon=True)
    writer.start()
    assert done.wait(5), "the write deadlocked on its own lock"
    assert inner.frames == ["the line\n", "from the handler\n"]  # whole, in order
    serial.write("next\n")
    assert inner.frames[-1] == "next\n"


def test_a_signal_handler_logging_inside_a_flush_or_between_writes_does_not_deadlock() -> None:
    """logging's handler flushes after every line; a signal landing in the flush (or
    between taking the lock and marking the write) ran a handler that logged, and it
    waited for ever on the lock its own thread held (a review: dramatiq's SIGTERM
    handler logs "Stopping worker process"). A real signal, in a child process."""
    script = r"""
import logging, os, signal, sys
from analytics.entrypoints.logs import SerialStream

class Stream:
    def __init__(self): self.lines, self.arm = [], False
    def write(self, text): self.lines.append(text); return len(text)
    def flush(self):
        if self.arm:
            self.arm = False
            os.kill(os.getpid(), signal.SIGTERM)  # delivered inside this frame
inner = Stream()
serial = SerialStream(inner)
log = logging.getLogger("t"); log.addHandler(logging.StreamHandler(serial)); log.setLevel("INFO")
signal.signal(signal.SIGTERM, lambda *a: log.info("Stopping worker process..."))
inner.arm = True
log.info("a normal line")
log.info("the next line")
sys.__stdout__.write("|".join(inner.lines))
"""
    proc = subprocess.run([sys.executable, "-c", script], env=child_env(), capture_output=True,  # noqa: S603
                          text=True, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "a normal line\n|Stopping worker process...\n|the next line\n"
