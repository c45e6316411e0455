"""`analytics serve` as a user runs it: embedded Redis, workers, API on a port; events in
over HTTP end up stored exactly once."""

from __future__ import annotations

import http.client
import json
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from analytics.adapters.sqlite_store import SQLiteDatabase, SQLiteEventRepository
from tests.support import ServeProcess, child_env, http_json, json_object, wait_until

NS = "serve-e2e"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, list[str]]]:
    data_dir = tmp_path_factory.mktemp("serve") / "data"
    log = data_dir.parent / "serve.log"
    # A namespace of its own: the commands that join it (dlq, check, worker) run without
    # one and must take the serve's (they used the default and saw nothing, QA).
    env = child_env(ANALYTICS_WEB_WORKERS="1", ANALYTICS_WORKER_PROCESSES="1",
                    ANALYTICS_AUTH="disabled", ANALYTICS_NAMESPACE=NS)  # fmt: skip
    with ServeProcess(data_dir, env, log=log) as serve:
        yield serve.url, data_dir, [str(log)]
    assert serve.proc.returncode == 0, log.read_text()[-3000:]


def test_start_banner_prints_url_and_curl(service) -> None:  # type: ignore[no-untyped-def]
    base, _, (log,) = service
    text = Path(log).read_text()
    assert base in text and "curl" in text


def test_events_sent_over_http_are_stored_once(service) -> None:  # type: ignore[no-untyped-def]
    base, data_dir, _ = service
    ids = [str(uuid.uuid4()) for _ in range(30)]
    for i, event_id in enumerate(ids[:10]):
        status, headers, body = http_json("POST", f"{base}/api/v1/analytics/events", {
            "event_type": "page_view", "user_id": f"u{i}", "session_id": "s1",
            "event_id": event_id})  # fmt: skip
        assert status == 202 and body["event_id"] == event_id
        assert headers["X-Correlation-ID"] == body["correlation_id"]
    batch = [{"event_type": "click", "user_id": "u", "session_id": "s", "event_id": e}
             for e in ids[10:]]  # fmt: skip
    status, _, body = http_json("POST", f"{base}/api/v1/analytics/events/batch", {"events": batch})
    assert status == 202 and body["accepted"] == 20
    # The client retries everything: nothing is stored twice.
    http_json("POST", f"{base}/api/v1/analytics/events/batch", {"events": batch})
    status, _, _ = http_json("POST", f"{base}/analytics/events",
                             {"event_type": "purchase", "user_id": "user123"})  # fmt: skip
    assert status == 202
    repo = SQLiteEventRepository(SQLiteDatabase(data_dir / "events.sqlite3"))
    wait_until(lambda: repo.count() == 31, timeout=30, message=f"stored {repo.count()}")
    assert len(repo.get_many(uuid.UUID(i) for i in ids)) == 30
    status, _, one = http_json("GET", f"{base}/api/v1/analytics/events/{ids[0]}")  # by its id
    assert status == 200 and one["event_id"] == ids[0] and one["user_id"] == "u0"
    assert http_json("GET", f"{base}/api/v1/analytics/events/{uuid.uuid4()}")[0] == 404


def test_embedded_redis_keeps_an_append_only_file(service) -> None:  # type: ignore[no-untyped-def]
    _, data_dir, _ = service
    redis_dir = data_dir / "redis"
    assert any(p.name.startswith("appendonly") for p in redis_dir.iterdir()), os.listdir(redis_dir)


def test_what_holds_events_is_readable_by_its_owner_only(service) -> None:  # type: ignore[no-untyped-def]
    """The event store, its write-ahead log and Redis's append-only file were 0644 under
    the usual umask (QA): every user of the host could read every user's events."""
    _, data_dir, _ = service
    wait_until(lambda: (data_dir / "events.sqlite3-wal").exists(), timeout=30)
    held = [data_dir, data_dir / "events.sqlite3", data_dir / "events.sqlite3-wal",
            *(data_dir / "redis").iterdir()]  # fmt: skip
    loose = {str(p): oct(p.stat().st_mode & 0o777) for p in held if p.stat().st_mode & 0o077}
    assert not loose, loose


def test_one_keep_alive_connection_mixes_served_and_replayed_requests(service) -> None:  # type: ignore[no-untyped-def]
    """Under gunicorn, the ingest lane serves the plain request and hands the failing one
    to Falcon with its body already read: the connection stays in step either way."""
    base, data_dir, _ = service
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    good = [str(uuid.uuid4()) for _ in range(3)]
    bodies = [
        (b'{"event_type": "page_view", "user_id": "u1", "session_id": "s1", "event_id": "%s"}'
         % good[0].encode(), 202),
        (b'{"event_type": "purchase", "user_id": "u1", "session_id": "s1"}', 422),  # no product
        (b'{"event_type": "page_view", "user_id": "u1", "session_id": "s1", "event_id": "%s"}'
         % good[1].encode(), 202),
        (b"{not json", 400),
        (b'{"event_type": "click", "user_id": "u1", "session_id": "s1", "event_id": "%s"}'
         % good[2].encode(), 202),
    ]
    try:
        for body, expected in bodies:
            conn.request("POST", "/api/v1/analytics/events", body=body,
                         headers={"Content-Type": "application/json"})  # fmt: skip
            resp = conn.getresponse()
            payload = json.loads(resp.read())
            assert resp.status == expected, payload
            if expected != 202:
                assert resp.getheader("Content-Type") == "application/problem+json"
    finally:
        conn.close()
    repo = SQLiteEventRepository(SQLiteDatabase(data_dir / "events.sqlite3"))
    wait_until(lambda: len(repo.get_many(uuid.UUID(i) for i in good)) == 3, timeout=30,
               message="the three accepted events stored")  # fmt: skip


def test_chunked_and_multi_member_gzip_bodies_are_read_whole(service) -> None:  # type: ignore[no-untyped-def]
    """A body sent with ``Transfer-Encoding: chunked`` has no Content-Length: it was
    read as empty (400 "truncated") on every route. A gzip body in several members
    (``cat a.gz b.gz``) lost all but the first. Both through gunicorn, as clients send."""
    import gzip  # noqa: PLC0415

    base, data_dir, _ = service
    host, port = base.removeprefix("http://").split(":")
    ids = [str(uuid.uuid4()) for _ in range(4)]

    def event(i: int) -> bytes:
        return json.dumps({"event_type": "click", "user_id": "u", "session_id": "s",
                           "event_id": ids[i]}).encode()  # fmt: skip

    def send(path: str, body: bytes, **headers: str) -> tuple[int, dict[str, object]]:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            chunks = iter([body[: len(body) // 2], body[len(body) // 2 :]])
            conn.request("POST", path, body=chunks, encode_chunked=True,
                         headers={"Content-Type": "application/json", **headers})  # fmt: skip
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    status, receipt = send("/api/v1/analytics/events", event(0))
    assert status == 202, receipt
    status, receipt = send("/api/v1/analytics/events/batch", b'{"events": [%s]}' % event(1))
    assert status == 202 and receipt["accepted"] == 1, receipt
    status, receipt = send("/analytics/events", event(2))
    assert status == 202, receipt
    whole = event(3)
    members = gzip.compress(whole[:10]) + gzip.compress(whole[10:])
    status, receipt = send("/api/v1/analytics/events", members, **{"Content-Encoding": "gzip"})
    assert status == 202, receipt
    status, problem = send("/api/v1/analytics/events", members + b"garbage",
                           **{"Content-Encoding": "gzip"})  # fmt: skip
    assert status == 400 and "after the last gzip member" in str(problem["detail"]), problem
    status, problem = send("/api/v1/analytics/events/batch", b" " * (1024 * 1024 + 1))
    assert status == 413, problem
    import socket  # noqa: PLC0415

    for framing in (b"zz\r\n{}\r\n0\r\n\r\n", b"2\r\n{}XX"):  # bad size; no terminator
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /api/v1/analytics/events HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                         b"\r\n" + framing)  # fmt: skip
            sock.shutdown(socket.SHUT_WR)
            answer = sock.makefile("rb").read()
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]  # it was a 500
    repo = SQLiteEventRepository(SQLiteDatabase(data_dir / "events.sqlite3"))
    wait_until(lambda: len(repo.get_many(uuid.UUID(i) for i in ids)) == 4, timeout=30,
               message="the four accepted events stored")  # fmt: skip


def test_requests_gunicorn_refuses_get_problem_json_too(service) -> None:  # type: ignore[no-untyped-def]
    """A malformed Content-Length or an oversized header never reaches the app: gunicorn
    answered with its HTML page, without a correlation id or the security headers."""
    import socket  # noqa: PLC0415

    base, _, _ = service
    host, port = base.removeprefix("http://").split(":")
    cases = [
        (b"Content-Length: abc\r\n", 400),
        (b"X-Correlation-ID: " + b"x" * 10_000 + b"\r\n", 431),
    ]
    for header, status in cases:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /api/v1/analytics/events HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\n" + header + b"\r\n{}")  # fmt: skip
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        assert lines[0].startswith(f"HTTP/1.1 {status} "), lines[0]
        assert headers["Content-Type"] == "application/problem+json"
        assert headers["X-Content-Type-Options"] == "nosniff"
        problem = json.loads(body)
        assert problem["status"] == status and problem["correlation_id"] == headers["X-Correlation-ID"]


def test_every_line_the_service_writes_is_json_but_the_banner(service) -> None:  # type: ignore[no-untyped-def]
    """gunicorn's master and workers, dramatiq's master and its processes, the scheduler:
    one JSON object per line, for a log shipper to parse; only ``serve``'s own banner for
    the person at the terminal is text. The scheduler's start-up run, which finds the
    workers still booting, is deferred and then enqueues the last closed hour."""
    _, _, (log,) = service

    def lines() -> list[str]:
        return [line for line in Path(log).read_text().splitlines() if line.strip()]

    def enqueued(job: str) -> bool:
        return any('"job enqueued"' in line and f'"{job}"' in line for line in lines())

    wait_until(lambda: enqueued("rollup_hourly"), timeout=30,
               message="the start-up rollup was never enqueued")  # fmt: skip
    texts = [line for line in lines() if not line.startswith(("analytics:", "  "))]
    not_json = [line for line in texts if json_object(line) is None]
    assert not not_json, not_json[:5]
    loggers = {(json_object(line) or {}).get("logger") for line in texts}
    assert {"gunicorn.error", "dramatiq.MainProcess", "dramatiq.WorkerProcess(0)"} <= loggers
    assert "apscheduler.scheduler" not in loggers  # its per-run INFO chatter is quiet


def test_ctrl_c_in_a_terminal_stops_everything_in_order(tmp_path: Path) -> None:
    """A terminal's Ctrl-C is SIGINT to the whole foreground process group. It reached
    gunicorn (a quick exit, requests in flight cut), dramatiq's worker processes (then
    their master's SIGTERM too: "Killing worker process", tasks cut) and Redis at once.
    The children now live in sessions of their own: ``serve`` alone gets it and stops
    the API, the workers and the scheduler gracefully, and Redis after them."""
    import signal  # noqa: PLC0415

    env = child_env(ANALYTICS_WEB_WORKERS="1", ANALYTICS_WORKER_PROCESSES="1",
                    ANALYTICS_AUTH="disabled")  # fmt: skip
    log = tmp_path / "serve.log"
    ids = [str(uuid.uuid4()) for _ in range(5)]
    # Its own process group, as a shell gives a foreground job: the signal goes to it all.
    with ServeProcess(tmp_path / "data", env, log=log, start_new_session=True) as serve:
        for event_id in ids:
            status, _, _ = http_json("POST", f"{serve.url}/api/v1/analytics/events", {
                "event_type": "page_view", "user_id": "u", "session_id": "s",
                "event_id": event_id})  # fmt: skip
            assert status == 202
        repo = SQLiteEventRepository(SQLiteDatabase(tmp_path / "data" / "events.sqlite3"))
        wait_until(lambda: len(repo.get_many(uuid.UUID(i) for i in ids)) == 5, timeout=30)
        os.killpg(serve.proc.pid, signal.SIGINT)
        assert serve.proc.wait(60) == 0
    text = log.read_text()
    assert "Handling signal: term" in text and "Handling signal: int" not in text  # gunicorn
    assert "Stopping worker process" in text and "Killing worker process" not in text


def test_check_beside_a_running_serve_asks_its_redis(service) -> None:  # type: ignore[no-untyped-def]
    """With no Redis configured, ``analytics check worker`` asked 127.0.0.1:6379 (another
    deployment's Redis on these machines) for serve's heartbeats, and said unhealthy."""
    import subprocess  # noqa: PLC0415

    from tests.support import analytics_cmd  # noqa: PLC0415

    _, data_dir, _ = service
    env = {k: v for k, v in child_env(ANALYTICS_DATA_DIR=str(data_dir)).items()
           if not k.startswith("REDIS_")}  # fmt: skip
    for args, environ in (((), env),  # ANALYTICS_DATA_DIR, or --data-dir as dlq takes it
                          (("--data-dir", str(data_dir)),
                           {k: v for k, v in env.items() if k != "ANALYTICS_DATA_DIR"})):  # fmt: skip
        proc = subprocess.run(  # noqa: S603, PLW1510 - the exit code is the assertion
            analytics_cmd("check", "worker", "--queues", "high_priority", *args), env=environ,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.startswith("healthy: worker heartbeats fresh for high_priority")


def test_the_dlq_command_sees_serves_own_redis(service) -> None:  # type: ignore[no-untyped-def]
    """With no Redis configured, ``analytics dlq --data-dir D`` talks to the Redis that
    ``serve`` runs for D (its Unix socket), not to whatever answers on 127.0.0.1:6379 (on
    these machines a Redis does, and the command said "No dead letters")."""
    import subprocess  # noqa: PLC0415

    import dramatiq  # noqa: PLC0415

    from analytics.adapters.dramatiq_queue import build_broker  # noqa: PLC0415
    from analytics.entrypoints.serve import embedded_redis_socket  # noqa: PLC0415
    from analytics.settings import Settings  # noqa: PLC0415
    from tests.support import analytics_cmd  # noqa: PLC0415

    _, data_dir, _ = service
    broker = build_broker(Settings(redis_socket=str(embedded_redis_socket(data_dir)), namespace=NS))
    try:
        poison = broker.enqueue(dramatiq.Message(
            queue_name="high_priority", actor_name="process_events", args=("{not json",),
            kwargs={}, options={},
        ))  # fmt: skip
    finally:
        broker.close()

    def dlq(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603, PLW1510 - the exit code is the assertion
            analytics_cmd("dlq", *args, "--data-dir", str(data_dir)), env=child_env(),
            capture_output=True, text=True, timeout=60, cwd=data_dir.parent,
        )  # fmt: skip

    def listed() -> list[str]:
        out = dlq("list", "--json")
        assert out.returncode == 0, out.stderr
        return [item["id"] for item in json.loads(out.stdout)["items"]]

    wait_until(lambda: poison.message_id in listed(), timeout=30,
               message="the poison message never showed in serve's dead letters")  # fmt: skip
    # Piped into a reader that leaves (`| head -1`): no "cannot reach the broker's Redis".
    cmd = " ".join(analytics_cmd("dlq", "list", "--data-dir", str(data_dir)))
    piped = subprocess.run(["bash", "-c", f"{cmd} | true; echo \"${{PIPESTATUS[0]}}\""],  # noqa: S603, S607
                           env=child_env(), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert piped.stdout.strip() == "0" and "cannot reach" not in piped.stderr, piped
    shown = dlq("show", "--id", poison.message_id[:8])
    assert shown.returncode == 0 and "PermanentError" in shown.stdout
    other = subprocess.run(  # noqa: S603, PLW1510 - another namespace, given: a mistake
        analytics_cmd("dlq", "list", "--data-dir", str(data_dir)),
        env=child_env(ANALYTICS_NAMESPACE="other"), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert other.returncode == 2 and f"ANALYTICS_NAMESPACE='{NS}'" in other.stderr, other
    assert dlq("purge", "--id", poison.message_id).returncode == 0
    assert poison.message_id not in listed()


def test_a_serve_killed_outright_takes_its_children_with_it(tmp_path: Path) -> None:
    """SIGKILL (the OOM killer, say) gives ``serve`` no chance to stop anything: its
    children, in sessions of their own, would keep the port and the Redis socket. They
    get SIGTERM when it dies (PR_SET_PDEATHSIG) and stop."""
    import signal  # noqa: PLC0415

    import psutil  # noqa: PLC0415

    env = child_env(ANALYTICS_WEB_WORKERS="1", ANALYTICS_WORKER_PROCESSES="1",
                    ANALYTICS_AUTH="disabled")  # fmt: skip
    with ServeProcess(tmp_path / "data", env, log=tmp_path / "serve.log") as serve:
        children = psutil.Process(serve.proc.pid).children(recursive=True)
        assert len(children) >= 4  # Redis, the API, the worker, the scheduler and theirs
        serve.proc.send_signal(signal.SIGKILL)
        serve.proc.wait(10)
        _, alive = psutil.wait_procs(children, timeout=60)
        log = (tmp_path / "serve.log").read_text(errors="replace")[-4000:]
        assert not alive, ([p.cmdline()[:4] for p in alive], log)


def test_a_second_serve_on_the_same_data_or_port_refuses_in_one_line(service, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A second ``serve`` on the same data directory started a second Redis on the same
    socket and append-only file (accepted events could be stranded in the first one's
    memory); on a busy port its API was restarted forever. Both now stop at once."""
    import subprocess  # noqa: PLC0415

    from tests.support import analytics_cmd, free_port  # noqa: PLC0415

    base, data_dir, _ = service
    port = base.rsplit(":", 1)[1]

    def second(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603, PLW1510 - the exit code is the assertion
            analytics_cmd("serve", *args), env=child_env(ANALYTICS_AUTH="disabled"),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    same_dir = second("--data-dir", str(data_dir), "--port", str(free_port()))
    assert same_dir.returncode == 2 and "another analytics serve (pid" in same_dir.stderr
    same_port = second("--data-dir", str(tmp_path / "other"), "--port", port)
    assert same_port.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in same_port.stderr
    assert "Traceback" not in same_dir.stderr + same_port.stderr
    assert http_json("GET", f"{base}/health")[0] == 200  # the first one is untouched


def test_serve_started_again_at_once_after_a_kill_waits_for_the_port(tmp_path: Path) -> None:
    """``serve`` killed outright (SIGKILL, an OOM kill) with a client connected: its API
    finishes that client's requests (gunicorn's graceful stop) and holds the port for
    seconds. A supervisor's immediate restart said "Address already in use", exited 2 and
    left the service down (QA). It now waits for the earlier API of its data directory."""
    import signal  # noqa: PLC0415

    env = child_env(ANALYTICS_WEB_WORKERS="1", ANALYTICS_WORKER_PROCESSES="1",
                    ANALYTICS_AUTH="disabled", ANALYTICS_WORKER_METRICS_PORT="0")  # fmt: skip
    data_dir, log = tmp_path / "data", tmp_path / "serve.log"
    with ServeProcess(data_dir, env, log=log) as first:
        host, port = first.url.removeprefix("http://").split(":")
        held = http.client.HTTPConnection(host, int(port), timeout=30)
        held.request("GET", "/health")  # a keep-alive connection the API keeps answering
        assert held.getresponse().read()
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        again = ServeProcess(data_dir, env, log=log, port=int(port))
        again.start()  # /health may still be the old API's answer: wait for the new banner
        try:
            wait_until(lambda: log.read_text().count("analytics: serving on") == 2
                       or again.proc.poll() is not None, timeout=60,
                       message="the second serve never started")  # fmt: skip
            assert again.proc.poll() is None, f"the second serve exited: {again.proc.returncode}"
            again.wait_http(f"{again.url}/health", timeout=60)
            status, _, body = http_json("POST", f"{again.url}/api/v1/analytics/events", {
                "event_type": "click", "user_id": "u", "session_id": "s"})  # fmt: skip
            assert status == 202, body
        finally:
            again.stop()
        held.close()
    assert "cannot listen on" not in log.read_text()  # serve's refusal of a busy port


def test_serve_restarts_its_redis_and_loses_nothing_it_acknowledged(tmp_path: Path) -> None:
    """The embedded Redis killed outright: ``serve`` starts it again from its append-only
    file (fsynced before every answer), ingest answers 202 again, and every event that
    got a 202, before the crash or after, is stored. Before, it stayed down: 503 forever."""
    import psutil  # noqa: PLC0415

    env = child_env(ANALYTICS_WEB_WORKERS="1", ANALYTICS_WORKER_PROCESSES="1",
                    ANALYTICS_AUTH="disabled")  # fmt: skip
    log = tmp_path / "serve.log"
    accepted: list[str] = []

    def send() -> int:
        event_id = str(uuid.uuid4())
        try:
            status, _, _ = http_json("POST", f"{serve.url}/api/v1/analytics/events", {
                "event_type": "click", "user_id": "u", "session_id": "s",
                "event_id": event_id})  # fmt: skip
        except OSError:
            return 0
        if status == 202:
            accepted.append(event_id)
        return status

    with ServeProcess(tmp_path / "data", env, log=log) as serve:
        assert all(send() == 202 for _ in range(5))
        (redis_proc,) = [p for p in psutil.Process(serve.proc.pid).children()
                         if p.name() == "redis-server"]  # fmt: skip
        redis_proc.kill()  # serve, its parent, reaps it
        wait_until(lambda: send() == 202, timeout=60, interval=0.5,
                   message="ingest never answered 202 again")  # fmt: skip
        assert all(send() == 202 for _ in range(5))
        repo = SQLiteEventRepository(SQLiteDatabase(tmp_path / "data" / "events.sqlite3"))
        wait_until(lambda: len(repo.get_many(uuid.UUID(i) for i in accepted)) == len(accepted),
                   timeout=60, message="not every accepted event was stored")  # fmt: skip
    assert "analytics: redis exited with" in log.read_text()


def test_a_worker_started_beside_serve_joins_its_redis(service) -> None:  # type: ignore[no-untyped-def]
    """``analytics worker`` with no Redis configured used 127.0.0.1:6379 (on these machines
    another deployment's Redis, whose queues it then consumed) even with a serve running
    for its data directory; now it joins that serve's Redis."""
    import subprocess  # noqa: PLC0415

    import redis  # noqa: PLC0415

    from analytics.entrypoints.serve import embedded_redis_socket  # noqa: PLC0415
    from tests.support import analytics_cmd, free_port  # noqa: PLC0415

    _, data_dir, _ = service
    client = redis.Redis(unix_socket_path=str(embedded_redis_socket(data_dir)))
    boots = int(client.hget(f"{NS}:ops:workers", "boots") or 0)
    env = {k: v for k, v in child_env(ANALYTICS_DATA_DIR=str(data_dir),
                                      ANALYTICS_WORKER_METRICS_PORT="0").items()
           if not k.startswith("REDIS_")}  # fmt: skip
    # Without serve's socket it would use 127.0.0.1:REDIS_PORT: here nothing listens (on
    # these machines 6379 is another deployment's Redis, never to be consumed from).
    env["REDIS_PORT"] = str(free_port())
    worker = subprocess.Popen(  # noqa: S603
        analytics_cmd("worker", "--queues", "maintenance", "--processes", "1", "--threads", "1"),
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: int(client.hget(f"{NS}:ops:workers", "boots") or 0) > boots,
                   timeout=60, message="the extra worker never booted on serve's Redis")  # fmt: skip
    finally:
        worker.terminate()
        _, err = worker.communicate(timeout=60)
        client.close()
    assert "using the Redis at 127.0.0.1" not in err, err


def test_an_api_without_serve_or_redis_host_says_which_redis(tmp_path: Path) -> None:
    import subprocess  # noqa: PLC0415

    from tests.support import analytics_cmd, free_port  # noqa: PLC0415

    with socket.socket() as taken:  # a busy port: the api stops right after saying it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {k: v for k, v in child_env(ANALYTICS_DATA_DIR=str(tmp_path)).items()
               if not k.startswith("REDIS_")}  # fmt: skip
        env["REDIS_PORT"] = str(free_port())  # nothing there, and not the shared Redis
        proc = subprocess.run(  # noqa: S603, PLW1510 - the exit code is the assertion
            analytics_cmd("api", "--host", "127.0.0.1", "--port", str(taken.getsockname()[1])),
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "no REDIS_HOST set and no analytics serve running for" in proc.stderr
