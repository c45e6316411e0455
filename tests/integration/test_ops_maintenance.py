"""The maintenance queue's actors on a real Redis broker, fed the way the scheduler feeds
them (a message by actor name), and the worker command's bad input."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import pytest

from analytics.adapters.memory import InMemoryEventRepository
from analytics.bootstrap import bootstrap
from analytics.entrypoints.actors import register_actors
from analytics.settings import Settings
from tests.ops_support import make_events
from tests.support import analytics_cmd, child_env

pytestmark = pytest.mark.integration


def test_maintenance_actors_purge_and_measure(redis_server: Any, namespace: str) -> None:
    repo = InMemoryEventRepository()
    now = datetime.now(UTC)
    repo.add_many(make_events(4, at=now - timedelta(days=200)) + make_events(3, at=now))
    container = bootstrap(Settings.from_env(redis_server.env(namespace)), event_repo=repo)
    register_actors(container)
    broker = container.broker
    # A dead letter to measure.
    client = redis_server.client()
    client.zadd(f"{namespace}:high_priority.XQ", {"x": 1})
    cutoff = (now - timedelta(days=90)).isoformat()
    for actor, kwargs in (("purge_events_before", {"cutoff": cutoff}), ("check_dead_letters", {})):
        broker.enqueue(dramatiq.Message(queue_name="maintenance", actor_name=actor, args=(),
                                        kwargs=kwargs, options={}))  # fmt: skip
    worker = dramatiq.Worker(broker, queues={"maintenance"}, worker_timeout=50)
    worker.start()
    try:
        broker.join("maintenance", timeout=20_000)
    finally:
        worker.stop()
        broker.close()
    assert repo.count() == 3  # the 200-day-old events are gone, aggregates untouched
    depths = container.dead_letters.recorded_depths()  # type: ignore[union-attr]
    assert depths["high_priority"] == "1" and depths["maintenance"] == "0"
    assert "measured_at" in depths


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("--queues", "high_priority,nope"), "unknown queue(s) nope"),
        (("--queues", ""), "unknown queue"),
        (("--processes", "0"), "out of range"),
        (("--processes", "65"), "65 is out of range 1..64"),  # as ANALYTICS_WORKER_PROCESSES
        (("--threads", "257"), "257 is out of range 1..256"),
        (("--threads", "many"), "not a whole number"),
    ],
)
def test_worker_bad_input_is_a_clear_message(args: tuple[str, ...], text: str) -> None:
    proc = subprocess.run(  # noqa: S603, PLW1510 - the exit code is the assertion
        analytics_cmd("worker", *args), env=child_env(), capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert text in proc.stderr and "Traceback" not in proc.stderr


def test_the_seeds_celery_worker_line_is_understood() -> None:
    """The seed: python celery_worker.py --concurrency 4 --queues high_priority,aggregations."""
    from analytics.entrypoints.cli import build_parser

    args = build_parser().parse_args(
        ["worker", "--concurrency", "4", "--queues", "high_priority,aggregations"]
    )
    assert args.processes == 4 and args.queues == ["high_priority", "aggregations"]


def test_dlq_show_offers_no_filters_and_needs_an_id(capsys: pytest.CaptureFixture[str]) -> None:
    """QA: ``dlq show --help`` listed --queue and --actor, which show never used."""
    from analytics.entrypoints.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["dlq", "show", "--queue", "maintenance", "--id", "abcdef"])
    assert "unrecognized arguments: --queue" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["dlq", "show"])
    assert "--id" in capsys.readouterr().err
    assert build_parser().parse_args(["dlq", "show", "--id", "abcdef"]).ids == ["abcdef"]


def test_dlq_without_a_reachable_redis_is_a_clear_message() -> None:
    from tests.support import free_port

    env = child_env(REDIS_HOST="127.0.0.1", REDIS_PORT=str(free_port()),
                    ANALYTICS_REDIS_TIMEOUT_S="1")  # fmt: skip
    proc = subprocess.run(  # noqa: S603, PLW1510 - the exit code is the assertion
        analytics_cmd("dlq", "list"), env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 1
    assert "cannot reach the broker's Redis" in proc.stderr and "Traceback" not in proc.stderr


def test_dlq_for_a_data_directory_without_a_running_serve_refuses(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """No Redis configured and no ``serve`` for the directory (stopped, or a mistyped
    ``--data-dir``): it read the Redis on 127.0.0.1:6379, another deployment's dead
    letters, and ``purge --all`` would have emptied them. Now one line, nothing touched."""
    env = {k: v for k, v in child_env().items() if not k.startswith("REDIS_")}
    for args in (("list",), ("purge", "--all")):
        proc = subprocess.run(  # noqa: S603, PLW1510 - the exit code is the assertion
            analytics_cmd("dlq", *args, "--data-dir", str(tmp_path / "nowhere")), env=env,
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert "no analytics serve is running for the data directory" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_api_on_a_busy_port_says_so_in_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """gunicorn retried the bind for five seconds, a dozen log lines, before giving up."""
    import socket  # noqa: PLC0415

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = child_env(ANALYTICS_DATA_DIR=str(tmp_path), ANALYTICS_AUTH="disabled",
                        ANALYTICS_BROKER="stub")  # fmt: skip
        proc = subprocess.run(  # noqa: S603, PLW1510 - the exit code is the assertion
            analytics_cmd("api", "--host", "127.0.0.1", "--port", str(port)), env=env,
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr


@pytest.mark.parametrize(("args", "says"), [
    (("dlq", "replay", "--actor", "proces_events"), "unknown actor 'proces_events'"),
    (("keys", "create", "--name", " ", "--scopes", "read"), "a key needs a name"),
])  # fmt: skip
def test_a_typo_in_an_operator_argument_is_refused_before_anything_runs(tmp_path, args, says) -> None:  # type: ignore[no-untyped-def]
    """``--actor`` with a typo filtered every dead letter out and said "replayed 0"; a
    blank key name was stored."""
    proc = subprocess.run(  # noqa: S603, PLW1510 - the exit code is the assertion
        analytics_cmd(*args, "--data-dir", str(tmp_path)), env=child_env(),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr


def test_keys_in_a_data_directory_without_a_key_store_say_so(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """QA: run from another directory, ``keys create`` silently made ./data/keys.sqlite3,
    and the key it printed got 401 from the running service."""
    def keys(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603, PLW1510 - the exit code is the assertion
            analytics_cmd("keys", *args, "--data-dir", str(tmp_path / "elsewhere")),
            env=child_env(), capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    listed = keys("list")
    assert listed.returncode == 2 and "no key store at" in listed.stderr, listed
    assert not (tmp_path / "elsewhere" / "keys.sqlite3").exists()
    created = keys("create", "--name", "ci", "--scopes", "read")
    assert created.returncode == 0 and "started a new key store at" in created.stderr, created
    again = keys("create", "--name", "ci2", "--scopes", "read")
    assert again.returncode == 0 and "new key store" not in again.stderr, again
    assert "ci2" in keys("list").stdout
