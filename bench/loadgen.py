"""A small closed-loop HTTP load generator: processes x threads, keep-alive connections.

Used by the benchmark scripts so every figure (the service and its baselines) is measured
by the same client in the same run; only ratios between them are meaningful on a shared
machine.
"""

from __future__ import annotations

import http.client
import multiprocessing as mp
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


def _worker(url: str, body_factory: BodyFactory, headers: dict[str, str], threads: int,
            seconds: float, out: mp.Queue) -> None:  # fmt: skip
    parts = urlsplit(url)
    stop_at = time.monotonic() + seconds
    lock = threading.Lock()
    lat: list[float] = []
    statuses: Counter[int] = Counter()

    def loop(tid: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        n = 0
        local_lat, local_st = [], Counter()
        while time.monotonic() < stop_at:
            body = body_factory(tid * 1_000_000 + n)
            n += 1
            t0 = time.perf_counter()
            try:
                conn.request("POST", parts.path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
                status = 0
            if 200 <= status < 300:
                local_lat.append((time.perf_counter() - t0) * 1000)
            local_st[status] += 1
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
