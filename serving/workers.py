"""What the live model workers serve, as the web tier sees it: read from their heartbeats."""

from __future__ import annotations

import threading
import time

from .messages import Heartbeat, ModelInfo
from .queue import RedisQueue
from .responses import ServiceUnavailable

NO_WORKER = "No model worker is running; try again shortly."


class WorkerDirectory:
    """The live workers, read from Redis at most once per ``refresh_seconds`` (every request
    needs the model's input size; one SCAN per request would cost more than the request)."""

    def __init__(self, queue: RedisQueue, refresh_seconds: float = 1.0):
        self.queue = queue
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._workers: dict[str, Heartbeat] = {}
        self._read_at = float("-inf")

    def workers(self) -> dict[str, Heartbeat]:
        with self._lock:
            if time.monotonic() - self._read_at > self.refresh_seconds:
                self._workers = self.queue.live_workers()
                self._read_at = time.monotonic()
            return self._workers

    def model(self) -> ModelInfo:
        """The model the workers serve (one model per queue); 503 when none is alive."""
        workers = self.workers()
        if not workers:
            raise ServiceUnavailable(NO_WORKER)
        return next(iter(workers.values())).model
