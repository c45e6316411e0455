"""The prometheus-client multiprocess directory, prepared before prometheus_client loads.

Kept apart from :mod:`analytics.entrypoints.metrics` because importing that module
imports prometheus_client, which decides once, at import, whether it runs in
multiprocess mode.
"""

from __future__ import annotations

import atexit
import fcntl
import os
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
            lock = candidate.with_name(candidate.name + ".lock")
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.set_inheritable(fd, True)  # dramatiq's reload re-executes the master
            _HELD[candidate] = fd
            atexit.register(_remove_at_exit, candidate, os.getpid())
        if candidate.exists():
            shutil.rmtree(candidate)
        candidate.mkdir(parents=True, exist_ok=True)
        target = os.environ if environ is None else environ
        target[MULTIPROC_ENV] = str(candidate)
        return candidate
    raise RuntimeError(f"every metrics directory next to {base} is in use")


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
