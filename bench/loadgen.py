"""A small closed-loop HTTP load generator: processes x threads, keep-alive connections.

Used by the benchmark scripts so every figure (the service and its baselines) is measured
by the same client in the same run; only ratios between them are meaningful on a shared
machine.

The client shares the CPU with the service it measures, so it is kept lean: a plain
HTTP/1.1 client over a socket (:class:`Connection`) instead of ``http.client``, whose
request building and ``email``-based header parsing cost about 3 us per event of a batch
(most of the client's CPU). It still sends every request in full and reads every response
to its end (Content-Length, chunked, or until close), and each status is counted.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

BodyFactory = Callable[[int], bytes]


@dataclass
class Result:
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)  # of 2xx answers
    statuses: Counter[int] = field(default_factory=Counter)
    items_per_request: int = 1

    @property
    def ok(self) -> int:
        return sum(n for s, n in self.statuses.items() if 200 <= s < 300)

    def rate(self) -> float:
        return self.ok * self.items_per_request / self.seconds

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


class Connection:
    """One keep-alive HTTP/1.1 connection: send a request, read the whole response."""

    def __init__(self, host: str, port: int, timeout: float = 30) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def request(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        """Send ``head`` (request line and headers, up to the blank line) and ``body``;
        return the status and the body of the response. Raises OSError on a broken
        connection or a response this client cannot frame."""
        self.sock.sendall(head + body)
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        header, self.buf = self.buf[:end], self.buf[end + 4 :]
        lines = header.split(b"\r\n")
        version, status, *_ = lines[0].split(b" ", 2)
        if not version.startswith(b"HTTP/1."):
            raise OSError(f"not an HTTP/1.x response: {lines[0]!r}")
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        if b"content-length" in fields:
            data = self._exactly(int(fields[b"content-length"]))
        elif fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            data = self._chunked()
        else:  # delimited by the end of the connection
            while self._fill(eof_ok=True):
                pass
            data, self.buf = self.buf, b""
            fields[b"connection"] = b"close"
        if fields.get(b"connection", b"").lower() == b"close" or version == b"HTTP/1.0":
            raise _Closed(int(status), data)
        return int(status), data

    def _fill(self, eof_ok: bool = False) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            if eof_ok:
                return False
            raise OSError("connection closed mid-response")
        self.buf += chunk
        return True

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _chunked(self) -> bytes:
        parts = []
        while True:
            while (end := self.buf.find(b"\r\n")) < 0:
                self._fill()
            size = int(self.buf[:end].split(b";")[0], 16)
            self.buf = self.buf[end + 2 :]
            if size == 0:  # then trailer lines, if any, and an empty line
                while True:
                    while (end := self.buf.find(b"\r\n")) < 0:
                        self._fill()
                    line, self.buf = self.buf[:end], self.buf[end + 2 :]
                    if not line:
                        return b"".join(parts)
            parts.append(self._exactly(size))
            self._exactly(2)  # the CRLF after the chunk's data


class _Closed(Exception):  # noqa: N818 - a complete response, then the server closed
    def __init__(self, status: int, body: bytes) -> None:
        self.status, self.body = status, body


def request_head(host: str, port: int, path: str, headers: dict[str, str], length: int) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {length}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _worker(url: str, body_factory: BodyFactory, headers: dict[str, str], threads: int,
            seconds: float, out: mp.Queue) -> None:  # fmt: skip
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path
    stop_at = time.monotonic() + seconds
    lock = threading.Lock()
    lat: list[float] = []
    statuses: Counter[int] = Counter()

    def loop(tid: int) -> None:
        conn: Connection | None = None
        n = 0
        local_lat, local_st = [], Counter()
        while time.monotonic() < stop_at:
            body = body_factory(tid * 1_000_000 + n)
            n += 1
            head = request_head(host, port, path, headers, len(body))
            t0 = time.perf_counter()
            try:
                if conn is None:
                    conn = Connection(host, port)
                status, _ = conn.request(head, body)
            except _Closed as closed:  # answered, then closed: count it, reconnect next time
                status = closed.status
                conn.close()  # type: ignore[union-attr]
                conn = None
            except (OSError, ValueError):
                if conn is not None:
                    conn.close()
                conn = None
                status = 0
            if 200 <= status < 300:
                local_lat.append((time.perf_counter() - t0) * 1000)
            local_st[status] += 1
        if conn is not None:
            conn.close()
        with lock:
            lat.extend(local_lat)
            statuses.update(local_st)

    ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put((lat, statuses))


def run(url: str, body_factory: BodyFactory, *, seconds: float, processes: int, threads: int,
        headers: dict[str, str] | None = None, items_per_request: int = 1) -> Result:  # fmt: skip
    headers = {"Content-Type": "application/json", **(headers or {})}
    ctx = mp.get_context("fork")
    out: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, body_factory, headers, threads, seconds, out))
             for _ in range(processes)]  # fmt: skip
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    result = Result(0.0, items_per_request=items_per_request)
    for _ in procs:
        lat, st = out.get()
        result.latencies_ms.extend(lat)
        result.statuses.update(st)
    for p in procs:
        p.join()
    result.seconds = time.perf_counter() - t0
    return result
