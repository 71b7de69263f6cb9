"""What the live model workers serve, as the web tier sees it: read from their heartbeats."""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

from serving.queue import RedisQueue
from serving.queue.messages import Heartbeat, ModelInfo
from serving.web.responses import ServiceUnavailable

NO_WORKER = "No model worker is running; try again shortly."


def ready_state(queue: RedisQueue) -> dict[str, Any]:
    """What a readiness probe answers when Redis answers and a model worker is alive; else 503.
    Read fresh each time, not from a WorkerDirectory's cache."""
    try:
        workers = queue.live_workers()
        depth = queue.depth()
        primary = queue.primary()
    except redis.RedisError:
        raise ServiceUnavailable("Redis is unreachable.") from None
    if not workers:
        raise ServiceUnavailable("No model worker has sent a heartbeat recently.")
    model = next(iter(workers.values())).model  # one model per queue; its runtime and precision
    # Which primary this process talks to, how it found it, and how many times it moved.
    redis_state = {"primary": primary, "via": queue.watch.how, "primary_changes": queue.watch.changes}
    return {
        "ready": True,
        "workers": len(workers),
        "queue_depth": depth,
        "model": model.as_dict(),
        "redis": redis_state,
    }


class WorkerDirectory:
    """The live workers, read from Redis at most once per ``refresh_seconds`` (every request
    needs the model's input size; one SCAN per request would cost more than the request)."""

    def __init__(self, queue: RedisQueue, refresh_seconds: float = 1.0):
        self.queue = queue
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._workers: dict[str, Heartbeat] = {}
        self._last_model: ModelInfo | None = None
        self._read_at = float("-inf")

    def workers(self) -> dict[str, Heartbeat]:
        with self._lock:
            self._refresh()
            return self._workers

    def _refresh(self) -> None:
        if time.monotonic() - self._read_at > self.refresh_seconds:
            self._workers = self.queue.live_workers()
            self._last_model = None if self._workers else self.queue.last_model()
            self._read_at = time.monotonic()

    def model(self) -> ModelInfo:
        """The model the workers serve (one model per queue). While none is alive (scaled to
        zero, restarting) it is the one they last served: its images queue until one starts.
        503 only when no worker has ever served this queue."""
        with self._lock:
            self._refresh()
            if self._workers:
                return next(iter(self._workers.values())).model
            if self._last_model:
                return self._last_model
        raise ServiceUnavailable(NO_WORKER)
