"""Load a running server: N image requests from C concurrent clients, then throughput and latency.

    python stress_test.py --url http://127.0.0.1:5000 --image ../shared/testdata/shuttle.jpg -n 500 -c 32

Each client is a thread with one keep-alive HTTP connection, so the load generator spends little
CPU of its own (it shares the machine with the server). Every request's multipart body has a
boundary of its own, as curl, requests and browsers send them: a server's cost that depends on
the boundary (parsers compile one into a regular expression) is not hidden by a cache.
Exits 1 if any request failed: anything but 200, or 503/504 unless --allow-busy.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

BUSY_STATUSES = frozenset({503, 504})
CONNECTION_ERROR = 0  # status recorded when no HTTP answer came back


@dataclass
class LoadResult:
    concurrency: int
    wall_seconds: float
    statuses: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds, one per request
    # CPU seconds the load generator itself spent (all its threads): on a machine it shares with
    # the server, what it takes from the server's cores.
    client_cpu_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        ok = sorted(lat for lat, status in zip(self.latencies, self.statuses) if status == 200)
        return {
            "concurrency": self.concurrency,
            "requests": len(self.statuses),
            "seconds": round(self.wall_seconds, 3),
            "throughput_rps": round(len(ok) / self.wall_seconds, 2) if self.wall_seconds else 0.0,
            "p50_ms": _percentile_ms(ok, 50),
            "p95_ms": _percentile_ms(ok, 95),
            "p99_ms": _percentile_ms(ok, 99),
            "mean_ms": round(statistics.fmean(ok) * 1000, 1) if ok else None,
            "statuses": {str(k): v for k, v in sorted(Counter(self.statuses).items())},
            "client_cpu_ms": (
                round(self.client_cpu_seconds * 1000 / len(self.statuses), 3) if self.statuses else None
            ),
        }

    def failures(self, allow_busy: bool) -> int:
        allowed = {200} | (BUSY_STATUSES if allow_busy else set())
        return sum(status not in allowed for status in self.statuses)


def _percentile_ms(sorted_seconds: list[float], percent: float) -> float | None:
    """Nearest-rank percentile, in milliseconds."""
    if not sorted_seconds:
        return None
    rank = max(1, -(-len(sorted_seconds) * percent // 100))  # ceil without floats
    return round(sorted_seconds[int(rank) - 1] * 1000, 1)


def multipart_body(image: bytes, filename: str, copies: int = 1) -> tuple[bytes, str]:
    """(body, content type) of a form with ``copies`` file fields named 'image'."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    parts = b"\r\n".join(head + image for _ in range(copies))
    return parts + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def run_load(
    url: str,
    image: bytes,
    requests: int,
    concurrency: int,
    *,
    filename: str = "image.jpg",
    timeout: float = 60.0,
    progress: bool = True,
    path: str = "/predict",
    images_per_request: int = 1,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """Send ``requests`` POSTs (of ``images_per_request`` images each) from ``concurrency``
    threads; each thread sends one at a time."""
    from tqdm import tqdm

    parts = urlsplit(url)
    extra_headers = headers or {}
    tickets = itertools.count()
    lock = threading.Lock()
    result = LoadResult(concurrency, 0.0)
    bar = tqdm(total=requests, unit="req", disable=not progress, leave=False, file=sys.stderr)

    def client() -> None:
        connection: http.client.HTTPConnection | None = None
        while next(tickets) < requests:
            if connection is None:
                host = cast(str, parts.hostname)  # the URL names its host
                connection = http.client.HTTPConnection(host, parts.port or 80, timeout=timeout)
            body, content_type = multipart_body(image, filename, images_per_request)
            sent = {"Content-Type": content_type, "Content-Length": str(len(body)), **extra_headers}
            started = time.perf_counter()
            try:
                connection.request("POST", path, body=body, headers=sent)
                response = connection.getresponse()
                response.read()
                status = response.status
                if response.getheader("Connection", "").lower() == "close":
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException):
                status = CONNECTION_ERROR
                assert connection is not None  # opened before the try, dropped only after an answer
                connection.close()
                connection = None
            elapsed = time.perf_counter() - started
            with lock:
                result.statuses.append(status)
                result.latencies.append(elapsed)
            bar.update(1)
        if connection is not None:
            connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(min(concurrency, requests))]
    started, cpu_started = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.wall_seconds = time.perf_counter() - started
    result.client_cpu_seconds = time.process_time() - cpu_started
    bar.close()
    return result


def format_summary(summary: dict[str, Any]) -> str:
    statuses = ", ".join(f"{k}: {v}" for k, v in summary["statuses"].items())
    return (
        f"c={summary['concurrency']} requests={summary['requests']} in {summary['seconds']:.2f} s | "
        f"{summary['throughput_rps']:.2f} req/s | p50 {summary['p50_ms']} ms, "
        f"p95 {summary['p95_ms']} ms, p99 {summary['p99_ms']} ms | statuses {statuses} | "
        f"this client's CPU {summary['client_cpu_ms']} ms/request"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:5000", help="server base URL")
    parser.add_argument("--image", required=True, type=Path, help="image file to send")
    parser.add_argument("-n", "--requests", type=int, default=200, help="total requests")
    parser.add_argument("-c", "--concurrency", type=int, default=16, help="concurrent clients")
    parser.add_argument("--images-per-request", type=int, default=1, help="image fields in each request")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request socket timeout, seconds")
    parser.add_argument(
        "--allow-busy",
        action="store_true",
        help="count 503 (busy) and 504 (timed out) answers as expected, not failures",
    )
    args = parser.parse_args(argv)
    if args.requests <= 0 or args.concurrency <= 0:
        parser.error("-n and -c must be positive")
    result = run_load(
        args.url,
        args.image.read_bytes(),
        args.requests,
        args.concurrency,
        filename=args.image.name,
        timeout=args.timeout,
        images_per_request=args.images_per_request,
    )
    print(format_summary(result.summary()))
    failed = result.failures(args.allow_busy)
    if failed:
        print(f"{failed} of {args.requests} requests failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
