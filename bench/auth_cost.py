"""python -m bench --auth-cost: what API keys, rate limits and fair share cost the pipeline.
The null model (no inference), so the figures are the web tier's, Redis's and the batching's
alone: one web process (--role web) and one worker process on a private Redis, once with
--auth none and once with --auth keys, where every request carries a key of a tenant with a
rate limit, a queued-images cap and an open-jobs cap (high enough never to refuse), so each
request pays the key lookup (cached), the token bucket (one Lua step) and the cap check. The two
servers are measured in turn, twice each (A B A B), at 32 clients; the goal: keys cost under 10 %.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import redis

from harness.launch import on_queue, python_server, server_command
from harness.processes import ChildProcess
from serving.queue.embedded import EmbeddedRedis
from serving.tenants.registry import Limits, TenantRegistry
from stress_test import run_load

DEPLOYMENT = "bench_auth"
CLIENTS = 32


def measure(image: bytes, log_dir: Path, quick: bool = False) -> dict[str, Any]:
    log_dir.mkdir(parents=True, exist_ok=True)
    requests = 300 if quick else 2400
    redis_server = EmbeddedRedis().start()
    try:
        key = TenantRegistry(redis.Redis.from_url(redis_server.url), DEPLOYMENT).add(
            "bench", Limits(images_per_second=1e6, burst=1_000_000, max_queued=100_000, max_jobs=1000)
        )
        worker = server_command(
            *on_queue("worker", redis_server.url, DEPLOYMENT, "--model", "null", "--log-level", "WARNING")
        )
        rates: dict[str, list[float]] = {"none": [], "keys": []}
        with ChildProcess(worker, log_path=log_dir / "auth_worker.log", name="auth-worker").start():
            for auth in ("none", "keys", "none", "keys"):
                web = [
                    "run_keras_server.py",
                    *on_queue("web", redis_server.url, DEPLOYMENT, "--log-level", "WARNING"),
                    "--auth",
                    auth,
                ]
                with python_server(web, log_dir / f"auth_{auth}_web.log") as server:
                    headers = {"Authorization": f"Bearer {key}"} if auth == "keys" else None
                    run_load(server.url, image, 64, 8, progress=False, headers=headers)  # warm up
                    result = run_load(server.url, image, requests, CLIENTS, progress=False, headers=headers)
                    summary = result.summary()
                    assert summary["statuses"] == {"200": requests}, summary["statuses"]
                    rates[auth].append(summary["throughput_rps"])
    finally:
        redis_server.stop()
    none, keys = statistics.mean(rates["none"]), statistics.mean(rates["keys"])
    return {
        "clients": CLIENTS,
        "requests_per_run": requests,
        "auth_none_rps": [round(r, 1) for r in rates["none"]],
        "auth_keys_rps": [round(r, 1) for r in rates["keys"]],
        "cost": round(1 - keys / none, 3) if none else None,
    }


def report(figures: dict[str, Any]) -> str:
    return (
        f"API keys + limits (null model, one web process, {figures['clients']} clients): "
        f"--auth none {figures['auth_none_rps']} req/s, --auth keys {figures['auth_keys_rps']} req/s; "
        f"cost {figures['cost'] * 100:.1f} % (goal < 10 %)"
    )
