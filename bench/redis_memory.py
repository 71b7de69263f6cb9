"""Redis memory per queued image: real uploads through ``--role web``, with no worker consuming.

A fake heartbeat makes the web tier accept requests; they wait in the queue while Redis's own
accounting is read, then time out (504) and withdraw their messages.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import requests

from harness.launch import on_queue, python_server
from serving.queue import RedisQueue
from serving.queue.catalogue import Catalogue
from serving.queue.connection import connect
from serving.queue.embedded import EmbeddedRedis
from serving.queue.keys import DEFAULT_TENANT, QueueKeys
from serving.queue.messages import INTERACTIVE, Heartbeat, ModelInfo

QUEUE = "bench_queue"
FLOAT32_DESIGN_BYTES = 4 * 224 * 224 * 3 * 4 // 3  # float32 pixels in base64: ~803 KB per image


def _fake_worker(queue: RedisQueue, input_size: tuple[int, int]) -> None:
    """A worker's records with no worker: the web server queues for it and nothing takes."""
    model = ModelInfo("benchmark-placeholder", input_size, 1000)
    queue.beat("benchmark-placeholder", Heartbeat(model, host="", pid=0, batch_size=8), ttl=120)
    Catalogue(queue.redis, QUEUE).announce(model, queue.name, ttl=120)


def measure(
    image: bytes, log_dir: Path, count: int = 16, input_size=(224, 224), images_per_request: int = 1
) -> dict:
    """Bytes Redis keeps per queued image, for ``count`` images sent ``images_per_request`` at a time."""
    wait_seconds = 5.0
    redis_server = EmbeddedRedis().start()
    try:
        client = connect(redis_server.url, timeout=5)
        queue = RedisQueue(client, QUEUE)
        _fake_worker(queue, input_size)
        args = [
            "run_keras_server.py",
            *on_queue("web", redis_server.url, QUEUE, "--client-timeout", str(wait_seconds)),
            "--log-level",
            "WARNING",
        ]
        with python_server(args, log_dir / "redis_memory_web.log", ready_path="/healthz") as server:
            before = int(client.info("memory")["used_memory"])
            statuses: list[int] = []

            def upload() -> None:
                files = [("image", (f"{i}.jpg", image)) for i in range(images_per_request)]
                response = requests.post(server.url + "/predict", files=files, timeout=wait_seconds + 30)
                statuses.append(response.status_code)

            threads = [threading.Thread(target=upload) for _ in range(count // images_per_request)]
            for thread in threads:
                thread.start()
            give_up = time.monotonic() + wait_seconds - 1
            while queue.depth() < count and time.monotonic() < give_up:
                time.sleep(0.01)  # polling Redis until every upload is queued
            queued = queue.depth()
            after = int(client.info("memory")["used_memory"])
            keys = QueueKeys(QUEUE)
            # The messages wait under their own keys; the tenant's lane holds a reference each,
            # and the lane's count a small token each.
            refs = keys.tenant_lane(DEFAULT_TENANT, INTERACTIVE)
            queued_bytes = int(client.memory_usage(refs, samples=0) or 0)
            queued_bytes += int(client.memory_usage(keys.lane(INTERACTIVE), samples=0) or 0)
            images = list(client.scan_iter(match=f"{keys.tag}:image:*"))
            queued_bytes += sum(int(client.memory_usage(key, samples=0) or 0) for key in images)
            markers = list(client.scan_iter(match=f"{keys.tag}:waiting:*"))
            marker_bytes = sum(int(client.memory_usage(key) or 0) for key in markers)
            sample = (client.get(images[0]) or b"") if images else b""
            for thread in threads:
                thread.join()
        client.close()
    finally:
        redis_server.stop()
    if queued == 0:
        raise RuntimeError(f"no upload reached the queue; statuses {statuses}")
    # What a queued request keeps in Redis: its message, its lane entries and its waiting marker. used_memory
    # also counts the uploads' connection buffers, which Redis frees once the clients go idle.
    per_image = (queued_bytes + marker_bytes) / queued
    return {
        "images_per_request": images_per_request,
        "queued": queued,
        "message_bytes": len(sample),
        "bytes_per_image": round(per_image),
        "queued_bytes_per_image": round(queued_bytes / queued),
        "used_memory_delta_per_image": round((after - before) / queued),
        "float32_design_bytes": FLOAT32_DESIGN_BYTES,
        "ratio": round(per_image / FLOAT32_DESIGN_BYTES, 4),
        "statuses_after_timeout": sorted(set(statuses)),
    }
