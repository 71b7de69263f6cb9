"""The model worker: take a batch from Redis, run the model once, answer every request."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np
import orjson
import redis

from helpers import decode_array

from .models.classifier import Classifier, top_k
from .queue import Finished, RedisQueue

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 1.0  # longest block on an empty queue, so a stop request is seen within a second


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class WorkerConfig:
    batch_size: int = 8
    batch_wait_ms: float = 5.0
    result_ttl: int = 60
    top_k: int = 5
    heartbeat_ttl: float = 10.0


@dataclass
class Request:
    request_id: str
    image: np.ndarray
    queued_at: float


def _error(request_id: str, status: int, message: str) -> Finished:
    return Finished(request_id, {"success": False, "status": status, "error": message})


def _read(raw: bytes) -> tuple[dict, str] | None:
    """A message and its request id, or None for bytes that are not a request (nobody waits)."""
    try:
        message = orjson.loads(raw)
        return message, str(message["id"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


def _error_for_each(messages: list[bytes], text: str) -> list[Finished]:
    """A 500 answer for every message whose request id can be read."""
    return [_error(read[1], 500, text) for raw in messages if (read := _read(raw))]


class ModelWorker:
    def __init__(self, queue: RedisQueue, classifier: Classifier, config: WorkerConfig,
                 worker_id: str | None = None, observer=None):
        self.queue = queue
        self.classifier = classifier
        self.config = config
        self.worker_id = worker_id or new_worker_id()
        self.stopping = threading.Event()
        self.observer = observer  # optional metrics sink with batch_done / dropped_expired
        self._expected_shape = (classifier.input_size[1], classifier.input_size[0], 3)
        self._last_batch_size = config.batch_size  # start as under load: wait the window
        self._beat_info = {
            "model": classifier.info(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "batch_size": config.batch_size,
        }

    # Lifecycle -----------------------------------------------------------------
    def stop(self) -> None:
        """Finish the batch in hand, then return from ``run``."""
        self.stopping.set()

    def run(self) -> None:
        log.info("worker %s serving %s, batches of up to %d", self.worker_id,
                 self.classifier.name, self.config.batch_size)
        try:  # alive before the first take, or another worker could requeue what this one holds
            self.queue.beat(self.worker_id, self._beat_info, self.config.heartbeat_ttl)
        except redis.RedisError:
            pass  # Redis is down; the heartbeat loop keeps trying
        heart = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        heart.start()
        try:
            while not self.stopping.is_set():
                try:
                    self.step()
                except Exception:  # a bug must not take the worker down with it
                    log.exception("worker step failed; continuing")
                    self.stopping.wait(1.0)
        finally:
            self.stopping.set()
            heart.join(timeout=2)
            try:
                self.queue.sign_off(self.worker_id)
            except redis.RedisError:
                pass
            log.info("worker %s stopped", self.worker_id)

    def step(self) -> int:
        """Take and answer one batch. Returns how many messages it took."""
        try:
            messages = self.queue.take_batch(self.worker_id, self.config.batch_size,
                                             self._batch_window(), IDLE_TIMEOUT)
        except redis.RedisError as exc:
            log.warning("Redis unavailable while waiting for work (%s); retrying in 1 s", exc)
            self.stopping.wait(1.0)
            return 0
        if messages:
            self._last_batch_size = len(messages)
            try:
                answers = self.process(messages)
            except Exception:  # answer the batch anyway: a live worker's batch is never requeued
                log.exception("processing a batch of %d failed", len(messages))
                answers = _error_for_each(messages, "The server failed on this request's batch.")
            self._answer(answers)
        return len(messages)

    def _batch_window(self) -> float:
        """The batching window, skipped right after a lone request: when requests come one at
        a time (c = 1) the window only adds its delay; once two arrive together it is back."""
        return self.config.batch_wait_ms / 1000 if self._last_batch_size > 1 else 0.0

    def _heartbeat_loop(self) -> None:
        interval = self.config.heartbeat_ttl / 3
        next_reap = 0.0
        while not self.stopping.is_set():
            try:
                self.queue.beat(self.worker_id, self._beat_info, self.config.heartbeat_ttl)
                if time.monotonic() >= next_reap:
                    moved = self.queue.requeue_dead()
                    if moved:
                        log.warning("returned %d messages of dead workers to the queue", moved)
                    next_reap = time.monotonic() + self.config.heartbeat_ttl
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)
            self.stopping.wait(interval)

    # One batch -----------------------------------------------------------------
    def _parse(self, raw: bytes, now: float) -> Request | Finished | None:
        """A request to run, an error answer for a bad one, or None to drop it."""
        read = _read(raw)
        if read is None:
            log.error("dropping a message that is not a request: %.80r", raw)
            return None
        message, request_id = read
        try:
            deadline = float(message.get("deadline", 0))
            queued_at = float(message.get("queued_at", now))
        except (TypeError, ValueError):
            return _error(request_id, 500, "The queued message has no valid deadline or queue time.")
        if deadline < now:
            if self.observer:
                self.observer.dropped_expired()
            return None  # the client has been told 504 already; do not spend the model on it
        try:
            image = decode_array(message["image"])
        except (KeyError, TypeError, ValueError) as exc:
            return _error(request_id, 500, f"The queued image could not be decoded ({exc}).")
        if image.shape != self._expected_shape or image.dtype != np.uint8:
            return _error(request_id, 500, f"The queued image is {image.dtype}{list(image.shape)}; "
                          f"this worker's model takes uint8{list(self._expected_shape)}.")
        return Request(request_id, image, queued_at)

    def process(self, messages: list[bytes]) -> list[Finished]:
        started = time.time()
        batch_id = uuid.uuid4().hex[:12]
        requests: list[Request] = []
        answers: list[Finished] = []
        for raw in messages:
            parsed = self._parse(raw, started)
            if isinstance(parsed, Request):
                requests.append(parsed)
            elif parsed is not None:
                answers.append(parsed)
        if not requests:
            return answers
        model_started = time.perf_counter()
        try:
            probabilities = self.classifier.predict(np.stack([r.image for r in requests]))
            ranked = top_k(probabilities, self.classifier.labels, self.config.top_k)
        except Exception:
            log.exception("model failed on batch %s of %d", batch_id, len(requests))
            return answers + [_error(r.request_id, 500, "The model failed on this request's batch.")
                              for r in requests]
        model_ms = (time.perf_counter() - model_started) * 1000
        if self.observer:
            self.observer.batch_done(len(requests), model_ms / 1000)
        log.debug("batch %s: %d images in %.1f ms", batch_id, len(requests), model_ms)
        for request, predictions in zip(requests, ranked):
            answers.append(Finished(request.request_id, {
                "success": True,
                "predictions": predictions,
                "model": self.classifier.info(),
                "batch": {"id": batch_id, "size": len(requests), "worker": self.worker_id},
                "timings_ms": {
                    "queued": round((started - request.queued_at) * 1000, 2),
                    "model": round(model_ms, 2),
                },
            }))
        return answers

    def _answer(self, answers: list[Finished]) -> None:
        """Write the answers; keep trying while Redis is away, the clients may still be waiting."""
        give_up_at = time.monotonic() + 30
        while True:
            try:
                self.queue.finish(self.worker_id, answers, self.config.result_ttl)
                return
            except redis.RedisError as exc:
                if time.monotonic() > give_up_at:
                    log.error("could not write %d answers: %s", len(answers), exc)
                    return
                log.warning("writing answers failed (%s); retrying", exc)
                time.sleep(0.5)
