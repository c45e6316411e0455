"""prometheus-client multiprocess mode as our processes use it (real child processes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from analytics.entrypoints.metrics_dir import MULTIPROC_ENV, prepare_multiproc_dir
from tests.support import child_env, free_port

pytestmark = pytest.mark.unit

CHILD = """
import os, sys, time
from analytics.entrypoints import metrics as m
m.EVENTS_ACCEPTED.labels("page_view").inc(int(sys.argv[1]))
m.PROCESSES.labels("api").set(1)
m.HTTP_IN_PROGRESS.inc()
print(os.getpid(), flush=True)
if sys.argv[2] == "wait":
    sys.stdin.read()
"""

RENDER = """
from pathlib import Path
import os
from analytics.entrypoints import metrics as m
print(m.render(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])).decode())
"""


def value(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return 0.0


def test_dir_is_wiped_at_start_and_counters_sum_over_processes_and_dead_ones_drop(tmp_path: Path):
    mp = tmp_path / "mp"
    mp.mkdir()
    (mp / "counter_999999.db").write_bytes(b"stale data from an earlier run")
    env: dict[str, str] = {}
    prepare_multiproc_dir(mp, env)
    assert list(mp.iterdir()) == [], "the directory is emptied at start"
    env = child_env(**env)

    # Two finished processes and one that stays alive.
    for n in ("3", "4"):
        subprocess.run([sys.executable, "-c", CHILD, n, "exit"], env=env, check=True, timeout=60)
    live = subprocess.Popen(
        [sys.executable, "-c", CHILD, "5", "wait"], env=env, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        live.stdout.readline()
        out = subprocess.run(
            [sys.executable, "-c", RENDER], env=env, check=True, timeout=60,
            capture_output=True, text=True,
        ).stdout  # fmt: skip
    finally:
        live.communicate("", timeout=30)
    # Counters keep the dead processes' counts; live gauges only count the living.
    assert value(out, 'analytics_events_accepted_total{event_type="page_view"}') == 12
    assert value(out, 'analytics_processes{component="api"}') == 1
    assert value(out, "analytics_http_requests_in_progress") == 1


def test_gunicorn_gets_a_child_exit_hook_only_in_multiprocess_mode(tmp_path: Path):
    from analytics.entrypoints.wsgi import GunicornServer
    from analytics.settings import Settings

    plain = GunicornServer(Settings(data_dir=tmp_path, port=free_port()))
    assert "child_exit" not in plain.options
    mp = GunicornServer(
        Settings(data_dir=tmp_path, port=free_port(), PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    )
    hook = mp.options["child_exit"]
    assert mp.cfg.child_exit is hook
    assert hook.__module__ == "analytics.entrypoints.metrics"
    assert plain.cfg.child_exit.__module__.startswith("gunicorn")


FORKS = """
import os, sys
from analytics.entrypoints import metrics as m
m.EVENTS_ACCEPTED.labels("click").inc(2)           # a child made before the fork
pid = os.fork()
if pid == 0:                                        # like a gunicorn worker after fork
    m.EVENTS_ACCEPTED.labels("click").inc(5)
    m.EVENTS_ACCEPTED.labels("purchase").inc(1)
    print(os.getpid(), m.process_id(), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
m.EVENTS_ACCEPTED.labels("click").inc(1)
print(os.getpid(), m.process_id(), flush=True)
"""


def test_values_written_after_a_fork_go_to_the_child_s_own_file(tmp_path: Path):
    """The pid check runs without a system call (``metrics.process_id``, refreshed at
    fork): a forked child must still start its own file, and never add to its parent's."""
    mp = tmp_path / "mp"
    env: dict[str, str] = {}
    prepare_multiproc_dir(mp, env)
    env = child_env(**env)
    out = subprocess.run([sys.executable, "-c", FORKS], env=env, check=True, timeout=60,
                         capture_output=True, text=True).stdout.split()  # fmt: skip
    child, child_seen, parent, parent_seen = map(int, out)
    assert (child_seen, parent_seen) == (child, parent) and child != parent
    counters = sorted(p.name for p in mp.glob("counter_*.db"))
    assert counters == sorted([f"counter_{parent}.db", f"counter_{child}.db"])
    rendered = subprocess.run([sys.executable, "-c", RENDER], env=env, check=True, timeout=60,
                              capture_output=True, text=True).stdout  # fmt: skip
    assert value(rendered, 'analytics_events_accepted_total{event_type="click"}') == 8
    assert value(rendered, 'analytics_events_accepted_total{event_type="purchase"}') == 1


def test_a_second_owner_never_empties_a_running_ones_directory(tmp_path: Path) -> None:
    """A second ``analytics api`` (or worker group of the same queues) on one host emptied
    the running one's directory: its /metrics lost every counter. The running one holds
    the directory's lock; the second takes the next one; once the first is gone, the next
    start takes (and empties) the first directory again."""
    base = tmp_path / "metrics" / "api"
    holder = subprocess.Popen(  # noqa: S603 - our own interpreter
        [sys.executable, "-c",
         ("import sys, pathlib; from analytics.entrypoints.metrics_dir import prepare_multiproc_dir;"
          "p = prepare_multiproc_dir(pathlib.Path(sys.argv[1]), {});"
          "(p / 'counter_1.db').write_bytes(b'x'); print(p, flush=True); sys.stdin.read()"),
         str(base)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert Path(holder.stdout.readline().strip()) == base.resolve()
        env: dict[str, str] = {}
        second = prepare_multiproc_dir(base, env)
        assert second == base.resolve().with_name("api.2") and env[MULTIPROC_ENV] == str(second)
        assert (base / "counter_1.db").exists()  # the running owner's file is untouched
    finally:
        holder.communicate("")  # stdin closed: the holder exits, its lock with it
    again = subprocess.run(  # noqa: S603
        [sys.executable, "-c",
         ("import sys, pathlib; from analytics.entrypoints.metrics_dir import prepare_multiproc_dir;"
          "print(prepare_multiproc_dir(pathlib.Path(sys.argv[1]), {}))"), str(base)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert Path(again.stdout.strip()) == base.resolve()
    assert not (base / "counter_1.db").exists()


def test_the_metrics_files_live_in_memory_unless_told(tmp_path: Path) -> None:
    """prometheus-client memory-maps its files: on a full data disk a write to a new page
    killed the process (SIGBUS), and gunicorn replaced its workers in a loop (QA). By
    default they live in /dev/shm, one directory per data directory."""
    from analytics.settings import Settings, default_metrics_base  # noqa: PLC0415

    shm = tmp_path / "shm"
    shm.mkdir()
    a, b = default_metrics_base(tmp_path / "a", shm), default_metrics_base(tmp_path / "b", shm)
    assert a.parent == shm and b.parent == shm and a != b
    assert default_metrics_base(tmp_path / "a" / ".." / "a", shm) == a  # the same directory
    assert default_metrics_base(tmp_path / "a", tmp_path / "none") == tmp_path / "a" / "metrics"
    told = Settings(data_dir=tmp_path / "a", metrics_dir=tmp_path / "m")
    assert told.metrics_base == tmp_path / "m"
    if Path("/dev/shm").is_dir():  # noqa: S108
        assert Settings(data_dir=tmp_path / "a").metrics_base.parent == Path("/dev/shm")  # noqa: S108


def test_the_owner_removes_its_directory_when_it_exits_and_its_children_do_not(
    tmp_path: Path,
) -> None:
    base = tmp_path / "shm" / "analytics-metrics-x" / "api"
    run = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c",
         ("import os, sys, pathlib; from analytics.entrypoints.metrics_dir import prepare_multiproc_dir;"
          "p = prepare_multiproc_dir(pathlib.Path(sys.argv[1]), {});"
          "(p / 'counter_1.db').write_bytes(b'x');"
          "pid = os.fork()\n"
          "if pid == 0: sys.exit(0)  # a forked worker leaving through sys.exit\n"
          "os.waitpid(pid, 0); print(sorted(x.name for x in p.iterdir()), flush=True)"),
         str(base)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert run.stdout.strip() == "['counter_1.db']", run  # the child left it alone
    assert not base.parent.exists()  # the owner took its files, lock and parent with it


HOLD = ("import sys, pathlib; from analytics.entrypoints.metrics_dir import prepare_multiproc_dir;"
        "p = prepare_multiproc_dir(pathlib.Path(sys.argv[1]), {});"
        "(p / 'counter_1.db').write_bytes(b'x'); print(p, flush=True); sys.stdin.read()")


def _holder(base: Path) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(base)], stdin=subprocess.PIPE,  # noqa: S603
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_a_directory_whose_owner_was_killed_is_removed_by_the_next_start(tmp_path: Path) -> None:
    """A group started while the previous one still stopped takes ``api.2``; killed
    outright it never removes it, and the next starts take ``api`` again: ``api.2`` stayed
    in /dev/shm for good (soak QA). A start removes the siblings nobody owns, never one
    a running group holds."""
    base = tmp_path / "shm" / "analytics-metrics-x" / "api"
    first, first_dir = _holder(base)
    killed, killed_dir = _holder(base)
    live, live_dir = _holder(base)
    assert (first_dir.name, killed_dir.name, live_dir.name) == ("api", "api.2", "api.3")
    killed.kill()  # no exit hooks: api.2 and its lock stay
    killed.wait(30)
    first.communicate("")  # api and its lock go; the parent stays (api.2, api.3 in it)
    assert sorted(p.name for p in base.parent.iterdir()) == [
        "api.2", "api.2.lock", "api.3", "api.3.lock"]  # fmt: skip
    again = subprocess.run([sys.executable, "-c", HOLD.replace("sys.stdin.read()", "0"),  # noqa: S603
                            str(base)], capture_output=True, text=True, check=True)  # fmt: skip
    assert Path(again.stdout.strip()).name == "api"
    assert sorted(p.name for p in base.parent.iterdir()) == ["api.3", "api.3.lock"]
    assert (live_dir / "counter_1.db").exists()  # the running group's, untouched
    live.communicate("")
    assert not base.parent.exists()
