"""python -m bench --many-models: what serving two models from one deployment costs the web
tier, and what a rollout under load costs its clients. Null models (no inference), so the figures
are the web tier's, Redis's and the batching's alone; one web process (--role web), one worker
process per model version, a private Redis.

1. One model alone at 32 clients, then two models at once (16 clients each, one web process):
   total and per-model throughput, and the two-model total against the one-model rate (goal:
   >= 0.9, i.e. sharing costs the web tier no more than 10 %).
2. A rollout under load: 16 clients on model "a" version 1; version 2 starts; once it is live
   (the switch), version 1 gets SIGTERM and drains. Failed requests (goal: 0) and the p99 of the
   requests sent in the 3 s after the switch against the p99 before it (goal: <= 2x).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import redis

from harness.launch import on_queue, python_server, server_command
from harness.processes import ChildProcess, wait_until
from serving.queue.catalogue import Catalogue
from serving.queue.embedded import EmbeddedRedis
from stress_test import LoadResult, run_load

DEPLOYMENT = "bench_many"


def _worker(redis_url: str, name: str, version: str, log_dir: Path) -> ChildProcess:
    command = server_command(
        *on_queue("worker", redis_url, DEPLOYMENT, "--model", "null", "--log-level", "WARNING"),
        "--model-name",
        name,
        "--model-version",
        version,
    )
    return ChildProcess(command, log_path=log_dir / f"worker_{name}_{version}.log", name=f"{name}-{version}")


def _live(client: redis.Redis, name: str, version: str) -> bool:
    return Catalogue(client, DEPLOYMENT).read().is_live(name, version)


def _load(url: str, image: bytes, count: int, concurrency: int, model: str) -> LoadResult:
    return run_load(url, image, count, concurrency, progress=False, path=f"/predict?model={model}")


def sharing(url: str, image: bytes, requests: int) -> dict[str, Any]:
    alone = _load(url, image, requests, 32, "a").summary()
    both: dict[str, dict[str, Any]] = {}

    def half(model: str) -> None:
        both[model] = _load(url, image, requests // 2, 16, model).summary()

    threads = [threading.Thread(target=half, args=(model,)) for model in ("a", "b")]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    total = sum(result["throughput_rps"] * result["seconds"] for result in both.values()) / wall
    return {
        "one_model_rps": alone["throughput_rps"],
        "two_models_rps": round(total, 1),
        "per_model_rps": {model: result["throughput_rps"] for model, result in both.items()},
        "ratio": round(total / alone["throughput_rps"], 3) if alone["throughput_rps"] else None,
        "statuses": {model: result["statuses"] for model, result in both.items()},
    }


def rollout(url: str, image: bytes, redis_url: str, log_dir: Path, seconds: float) -> dict[str, Any]:
    client = redis.Redis.from_url(redis_url)
    sent: list[tuple[float, float, int]] = []  # (sent at, latency, status)
    stop = threading.Event()

    def client_loop() -> None:
        while not stop.is_set():
            began = time.monotonic()
            result = _load(url, image, 1, 1, "a")
            sent.append((began, result.latencies[0] if result.latencies else 0.0, result.statuses[0]))

    with _worker(redis_url, "a", "1", log_dir).start() as v1:
        wait_until(lambda: _live(client, "a", "1"), 120, "version 1")
        threads = [threading.Thread(target=client_loop) for _ in range(16)]
        for thread in threads:
            thread.start()
        time.sleep(seconds / 2)
        with _worker(redis_url, "a", "2", log_dir).start():
            wait_until(lambda: _live(client, "a", "2"), 120, "version 2")
            switched = time.monotonic()
            v1.stop()  # SIGTERM: the retired version answers what its lanes hold, then exits
            time.sleep(seconds / 2)
            stop.set()
            for thread in threads:
                thread.join(60)

    def p99(latencies: list[float]) -> float | None:
        ordered = sorted(latencies)
        return round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 1) if ordered else None

    before = [lat for at, lat, status in sent if at < switched and status == 200]
    during = [lat for at, lat, status in sent if switched <= at < switched + 3 and status == 200]
    before_p99, during_p99 = p99(before), p99(during)
    return {
        "requests": len(sent),
        "failed": sum(status != 200 for *_, status in sent),
        "p99_before_ms": before_p99,
        "p99_switch_ms": during_p99,
        "spike": round(during_p99 / before_p99, 2) if before_p99 and during_p99 else None,
    }


def measure(image: bytes, log_dir: Path, quick: bool = False) -> dict[str, Any]:
    log_dir.mkdir(parents=True, exist_ok=True)
    redis_server = EmbeddedRedis().start()
    try:
        web_args = [
            "run_keras_server.py",
            *on_queue("web", redis_server.url, DEPLOYMENT, "--log-level", "WARNING"),
        ]
        with (
            _worker(redis_server.url, "a", "1", log_dir).start(),
            _worker(redis_server.url, "b", "1", log_dir).start(),
        ):
            with python_server(web_args, log_dir / "many_models_web.log", ready_path="/healthz") as web:
                client = redis.Redis.from_url(redis_server.url)
                wait_until(lambda: _live(client, "a", "1") and _live(client, "b", "1"), 120, "both models")
                shared = sharing(web.url, image, 400 if quick else 3000)
        with python_server(web_args, log_dir / "rollout_web.log", ready_path="/healthz") as web:
            rolled = rollout(web.url, image, redis_server.url, log_dir, 4.0 if quick else 10.0)
    finally:
        redis_server.stop()
    return {"sharing": shared, "rollout": rolled}


def report(figures: dict[str, Any]) -> str:
    shared, rolled = figures["sharing"], figures["rollout"]
    return "\n".join(
        [
            "many models (null models, one web process):",
            f"  one model, 32 clients: {shared['one_model_rps']} req/s; two models, 16 clients each: "
            f"{shared['two_models_rps']} req/s in all {shared['per_model_rps']}; "
            f"ratio {shared['ratio']} (goal >= 0.9)",
            f"  rollout under load (16 clients): {rolled['requests']} requests, {rolled['failed']} failed "
            f"(goal 0); p99 {rolled['p99_before_ms']} ms before, {rolled['p99_switch_ms']} ms in the 3 s "
            f"after the switch: {rolled['spike']}x (goal <= 2)",
        ]
    )
