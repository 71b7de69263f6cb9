"""python -m bench.waiting: what a waiting client costs, and the null-model pipeline's speed.

    python -m bench.waiting [--root DIR] [--baseline DIR] [--seconds 8] [--waits 1000]

Starts `python run_keras_server.py --model null` from ``--root`` (default: this checkout) on an
embedded Redis, then measures:

- null-model /predict throughput at 32 clients and latency at 1 client (keep-alive clients);
  with ``--baseline`` (an older checkout, e.g. `git worktree add /tmp/before 754ac22^`, the
  last commit before gevent) the same from there first, in the same run, and the ratios;
- the server's RSS and Redis's memory with ``--waits`` long-polls (GET /jobs/<id>?wait=30 on a
  job nothing computes) held, and /healthz latency meanwhile.

Prints one line per figure, and the machine (CPU model, load average).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import redis
import requests
from PIL import Image

from harness.processes import ROOT, ServerProcess, free_port, wait_until
from serving.queue import RedisQueue
from serving.queue.catalogue import Catalogue, model_queue_name
from serving.queue.embedded import EmbeddedRedis
from serving.queue.messages import Heartbeat, ModelInfo
from stress_test import run_load

QUEUE = "benchwait"


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")
        )
    except (OSError, subprocess.CalledProcessError, IndexError):
        return platform.processor() or "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose run_keras_server.py runs")
    parser.add_argument("--baseline", type=Path, default=None, help="checkout to compare against")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--waits", type=int, default=1000)
    args = parser.parse_args(argv)
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; root {args.root}")
    embedded = EmbeddedRedis(port=free_port()).start()
    image = png()
    server = None
    try:
        figures = {}
        for root in ([args.baseline] if args.baseline else []) + [args.root]:
            server = start_server(root, embedded.url, args.waits, "--model", "null")
            figures[root] = null_model_figures(server.url, image, args.seconds, root)
            server.stop()
        if args.baseline:
            before, after = figures[args.baseline], figures[args.root]
            print(
                f"after/before: c=32 throughput x{after[32][0] / before[32][0]:.2f}, "
                f"c=1 p50 x{after[1][1] / before[1][1]:.2f} (below 1: faster); "
                f"load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        # Long-polls on a job nothing computes: a web-only server, a worker's heartbeat faked.
        # The heartbeat on the model version's queue, and the catalogue entry web servers route by.
        client = redis.Redis.from_url(embedded.url, socket_timeout=5)
        model = ModelInfo("null", (32, 32), 3)
        queue_name = model_queue_name(QUEUE, model.name, model.version)
        RedisQueue(client, queue_name).beat("bench", Heartbeat(model, "h", 1, 8), ttl=300)
        Catalogue(client, QUEUE).announce(model, queue_name, 300)
        server = start_server(args.root, embedded.url, args.waits, "--role", "web")
        waits_figures(server, embedded, image, args.waits)
    finally:
        if server is not None:
            server.stop()
        embedded.stop()
    return 0


def null_model_figures(url: str, image: bytes, seconds: float, root: Path) -> dict[int, tuple[float, float]]:
    """Throughput and p50 at 32 clients and at 1 client, printed; by concurrency."""
    run_load(url, image, 200, 8, filename="i.png", progress=False)  # warm-up
    figures = {}
    for concurrency in (32, 1):
        count = int((600 if concurrency > 1 else 150) * seconds)
        started = time.monotonic()
        result = run_load(url, image, count, concurrency, filename="i.png", progress=False)
        summary = result.summary()
        rate, p50 = summary["throughput_rps"], summary["p50_ms"]
        print(
            f"{root.name}: null model, c={concurrency}: {rate} req/s, p50 {p50} ms, "
            f"p99 {summary['p99_ms']} ms ({summary['requests']} requests in "
            f"{time.monotonic() - started:.1f} s, statuses {summary['statuses']})",
            flush=True,
        )
        figures[concurrency] = (float(rate), float(p50))
    return figures


def start_server(root: Path, redis_url: str, waits: int, *flags: str) -> ServerProcess:
    port = free_port()
    command = [sys.executable, str(root / "run_keras_server.py"), "--port", str(port), *flags]
    command += ["--redis-url", redis_url, "--queue-name", QUEUE, "--max-connections", str(waits + 200)]
    command += ["--log-level", "WARNING"]
    server = ServerProcess(
        command, port, ready_timeout=120, cwd=root, env={"PYTHONPATH": str(root)}, name="bench-waiting"
    )
    return server.start()


def waits_figures(server: ServerProcess, embedded: EmbeddedRedis, image: bytes, waits: int) -> None:
    client = redis.Redis.from_url(embedded.url, socket_timeout=5)
    process = psutil.Process(server.pid)
    response = requests.post(server.url + "/jobs", files={"image": ("i.png", image)}, timeout=10)
    if response.status_code != 202:
        print(f"jobs: {response.status_code} {response.text[:100]}")
        return
    job = response.json()["id"]
    gc_rss = process.memory_info().rss
    redis_before = int(client.info("memory")["used_memory"])
    request = f"GET /jobs/{job}?wait=30 HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    sockets = []
    started = time.monotonic()
    for _ in range(waits):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(request)
        sockets.append(sock)
    try:
        try:
            wait_until(lambda: int(client.info("clients")["blocked_clients"]) >= waits, 30, "the long-polls")
        except Exception:  # a thread server holds as many waits as it has threads
            blocked = int(client.info("clients")["blocked_clients"])
            print(f"{waits} waiting clients: only {blocked} waits reached Redis within 30 s")
            return
        placed = time.monotonic() - started
        time.sleep(1)
        rss = process.memory_info().rss
        redis_used = int(client.info("memory")["used_memory"])
        latencies = []
        for _ in range(100):
            t = time.monotonic()
            requests.get(server.url + "/healthz", timeout=5)
            latencies.append(time.monotonic() - t)
            time.sleep(0.01)
        latencies.sort()
        threads = process.num_threads()
    finally:
        for sock in sockets:
            sock.close()
    grown, redis_grown = rss - gc_rss, redis_used - redis_before
    print(
        f"{waits} waiting clients (long-polls, placed in {placed:.1f} s): server RSS "
        f"+{grown / 2**20:.0f} MB ({grown / waits / 1024:.0f} KB each), Redis used_memory "
        f"+{redis_grown / 2**20:.0f} MB, "
        f"{threads} OS threads; /healthz p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {latencies[98] * 1000:.1f} ms; load {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    sys.exit(main())
