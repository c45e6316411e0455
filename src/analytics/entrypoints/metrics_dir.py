"""The prometheus-client multiprocess directory, prepared before prometheus_client loads.

Kept apart from :mod:`analytics.entrypoints.metrics` because importing that module
imports prometheus_client, which decides once, at import, whether it runs in
multiprocess mode.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import re
import shutil
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiproc_dir(path: Path, environ: dict[str, str] | None = None) -> Path:
    """Own ``path`` (or ``path.2``, ``path.3``... when a running process owns it), empty
    it, and export it as ``PROMETHEUS_MULTIPROC_DIR``.

    Called by the process that owns the directory (``analytics api``: the gunicorn master;
    ``analytics worker``: the dramatiq master) at its start, before prometheus_client is
    imported in it or its children: files left by an earlier run would otherwise be added
    to this run's counters. Ownership is an ``flock`` on ``<dir>.lock``, held by a
    descriptor this process and every process it forks or execs keeps open: a second
    ``api`` or worker group started beside a running one (a busy port, a second group of
    the same queues) emptied the running one's directory, and its ``/metrics`` lost every
    counter until it restarted. Now it takes the next free directory, and the lock is
    released only when the last process of the owner is gone.
    """
    base = Path(path).resolve()
    base.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    for n in range(1, 1000):
        candidate = base if n == 1 else base.with_name(f"{base.name}.{n}")
        if candidate not in _HELD:  # already ours (prepared again in this process): reuse
            fd = _lock(candidate.with_name(candidate.name + ".lock"))
            if fd is None:
                continue
            os.set_inheritable(fd, True)  # dramatiq's reload re-executes the master
            _HELD[candidate] = fd
            atexit.register(_remove_at_exit, candidate, os.getpid())
        if candidate.exists():
            shutil.rmtree(candidate)
        candidate.mkdir(parents=True, exist_ok=True)
        _remove_unowned_siblings(base)
        target = os.environ if environ is None else environ
        target[MULTIPROC_ENV] = str(candidate)
        return candidate
    raise RuntimeError(f"every metrics directory next to {base} is in use")


def _lock(lock: Path) -> int | None:
    """A descriptor holding an ``flock`` on ``lock``, or None when another process holds
    it. A lock file is unlinked by whoever holds it (an owner leaving, a sweep): a lock
    taken on the unlinked file would be a second owner of the directory, so the file
    must still be the one locked."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # unlinked while we locked it: try the file that is there now


def _remove_unowned_siblings(base: Path) -> None:
    """``<base>.2``, ``<base>.3``... whose owner is gone. One is taken while an earlier
    group still stops (a restart); killed outright, it never removes it, and later starts
    take ``<base>`` again: the ``.2`` stayed in memory (``/dev/shm``) for good (soak QA)."""
    pattern = re.compile(re.escape(base.name) + r"\.\d+\.lock")
    for lock in base.parent.iterdir():
        candidate = lock.with_name(lock.name.removesuffix(".lock"))
        if not pattern.fullmatch(lock.name) or candidate in _HELD:
            continue
        fd = _lock(lock)
        if fd is None:
            continue  # owned: a running group's
        try:
            shutil.rmtree(candidate, ignore_errors=True)
            lock.unlink(missing_ok=True)  # before the lock is let go
        finally:
            os.close(fd)


def adopt_multiproc_dir(path: Path) -> None:
    """In a process that replaced the owner by ``exec`` (dramatiq's reload re-executes its
    master): its exit hooks were gone with the old image, so the directory (in /dev/shm
    by default) outlived the worker (QA). The lock's descriptor came along open."""
    atexit.register(_remove_at_exit, Path(path), os.getpid())


def _remove_at_exit(path: Path, owner: int) -> None:
    """The owner leaving (its processes gone): its files, its lock, and their parent once
    empty. They live in memory by default (``/dev/shm``), where nothing else frees them;
    a start empties them anyway. Forked children run the owner's exit hooks too (gunicorn's
    workers exit through ``sys.exit``): only the owner itself removes anything."""
    if os.getpid() != owner:
        return
    shutil.rmtree(path, ignore_errors=True)
    fd = _HELD.pop(path, None)
    path.with_name(path.name + ".lock").unlink(missing_ok=True)  # before the lock is let go
    if fd is not None:
        os.close(fd)
    try:
        path.parent.rmdir()
    except OSError:
        pass  # another component's directory or lock is still there


#: The directories this process owns, with their lock descriptors: open until it exits.
_HELD: dict[Path, int] = {}
