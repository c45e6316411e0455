"""The benchmark's HTTP client frames requests and responses correctly (it must not make
the service look faster than it is: every request sent in full, every response read)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from analytics.domain.events import EventIn
from analytics.domain.validation import decode_event
from bench.ingest import batch_body_factory
from bench.loadgen import Connection, _Closed, request_head, run

pytestmark = pytest.mark.unit


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[tuple[str, dict[str, str], bytes]]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Handler.seen.append((self.path, dict(self.headers), body))
        if self.path == "/chunked":
            self.send_response(500)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"ab", b"cde", b""):
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        elif self.path == "/close":
            self.send_response(413)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"too large")
            self.close_connection = True
        else:
            out = json.dumps({"len": len(body)}).encode()
            self.send_response(202)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, int]]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield "127.0.0.1", httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_requests_and_responses_are_framed(server: tuple[str, int]) -> None:
    host, port = server
    conn = Connection(host, port)
    headers = {"Content-Type": "application/json"}
    for size in (0, 10, 200_000):  # one keep-alive connection for all of these
        body = b"x" * size
        status, data = conn.request(request_head(host, port, "/ok", headers, len(body)), body)
        assert (status, json.loads(data)) == (202, {"len": size})
        assert Handler.seen[-1][2] == body
        assert Handler.seen[-1][1]["Content-Type"] == "application/json"
    status, data = conn.request(request_head(host, port, "/chunked", headers, 1), b"x")
    assert (status, data) == (500, b"abcde")
    with pytest.raises(_Closed) as closed:
        conn.request(request_head(host, port, "/close", headers, 1), b"x")
    assert (closed.value.status, closed.value.body) == (413, b"too large")
    conn.close()


def test_run_counts_every_status(server: tuple[str, int]) -> None:
    host, port = server
    result = run(
        f"http://{host}:{port}/close", lambda i: b"{}", seconds=0.3, processes=1, threads=2
    )
    assert set(result.statuses) == {413} and result.ok == 0
    result = run(f"http://{host}:{port}/ok", lambda i: b"{}", seconds=0.3, processes=1, threads=2)
    assert set(result.statuses) == {202} and result.ok > 0


def test_batch_bodies_hold_distinct_valid_events() -> None:
    body = batch_body_factory(100)
    ids = []
    for i in (0, 1, 63, 64, 1_000_000):
        events = json.loads(body(i))["events"]
        assert len(events) == 100
        for doc in events:
            assert isinstance(decode_event(json.dumps(doc).encode(), EventIn), EventIn)
            ids.append(doc["event_id"])
    assert len(set(ids)) == len(ids)
