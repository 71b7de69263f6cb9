"""Prometheus metrics: HTTP metrics per web process, queue and model metrics from Redis.

Two sources, because the web processes and the model workers may live on different hosts:

- HTTP requests (count by status, latency) are recorded by prometheus-client in the web
  process that answered. Under gunicorn, PROMETHEUS_MULTIPROC_DIR (an empty directory, set
  before the app is imported; gunicorn.conf.py sees to both) makes every scrape sum all the
  processes of that server.
- Queue depth, live workers, batch sizes, model time and dropped requests describe the whole
  deployment, so they live in Redis: each worker adds its batch stats to one hash under the
  queue name (one MULTI every quarter second), and /metrics reads Redis at scrape time. Every web
  server therefore reports the same deployment-wide values: aggregate them with max(), not sum().

No gauge is kept in the multiprocess files, so no per-process cleanup (mark_process_dead) is needed.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time

import redis
from flask import Flask, Response, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from . import request_log
from .messages import BULK, INTERACTIVE, LANES
from .queue import RedisQueue
from .services import services
from .worker import BatchObserver

log = logging.getLogger(__name__)

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MODEL_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

HTTP_REQUESTS = Counter(
    "inference_http_requests",
    "HTTP requests answered, by route and status.",
    ["method", "endpoint", "status"],
)
HTTP_LATENCY = Histogram(
    "inference_http_request_duration_seconds",
    "Time from request received to response ready, by route.",
    ["method", "endpoint"],
    buckets=LATENCY_BUCKETS,
)


def _bucket_field(prefix: str, bounds: tuple, value: float) -> str:
    """The hash field of the one (non-cumulative) bucket ``value`` falls in."""
    for bound in bounds:
        if value <= bound:
            return f"{prefix}:{bound}"
    return f"{prefix}:+Inf"


class RedisBatchStats(BatchObserver):
    """The model worker's observer: deployment-wide batch stats in one Redis hash.

    Counts are added up in memory and written by a background thread, one MULTI every
    ``flush_seconds``: the Redis round trip (~0.4 ms here) stays off the batch's answer path.
    """

    def __init__(self, queue: RedisQueue, flush_seconds: float = 0.25):
        self.redis = queue.redis
        self.key = queue.keys.stats
        self.flush_seconds = flush_seconds
        self._pending: dict[str, float] = {}
        self._lock = threading.Lock()
        self._flusher: threading.Thread | None = None

    def batch_done(self, size: int, seconds: float) -> None:
        self._add(
            {
                _bucket_field("batch_size", BATCH_SIZE_BUCKETS, size): 1,
                "batch_size_sum": size,
                _bucket_field("model_seconds", MODEL_SECONDS_BUCKETS, seconds): 1,
                "model_seconds_sum": seconds,
            }
        )

    def dropped_expired(self, count: int) -> None:
        self._add({"dropped_expired": count})

    def _add(self, increments: dict[str, float]) -> None:
        with self._lock:
            for field, amount in increments.items():
                self._pending[field] = self._pending.get(field, 0) + amount
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_loop, name="batch-stats", daemon=True)
                self._flusher.start()
                atexit.register(self.flush)

    def flush(self) -> None:
        """Write what has been counted so far; on failure keep it for the next try."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        pipe = self.redis.pipeline(transaction=True)  # a scrape never sees half a batch
        for field, amount in pending.items():
            if field.endswith("seconds_sum"):
                pipe.hincrbyfloat(self.key, field, amount)
            else:
                pipe.hincrby(self.key, field, int(amount))
        try:
            pipe.execute()
        except redis.RedisError as exc:  # metrics must never cost an answer: retry later
            log.warning("could not record batch stats: %s", exc)
            with self._lock:
                for field, amount in pending.items():
                    self._pending[field] = self._pending.get(field, 0) + amount

    def _flush_loop(self) -> None:
        while True:
            time.sleep(self.flush_seconds)
            self.flush()


def _histogram(name: str, doc: str, stats: dict[str, str], prefix: str, bounds: tuple):
    """Cumulative Prometheus buckets from the per-bucket counts the workers wrote."""
    buckets, running = [], 0
    for bound in (*bounds, "+Inf"):
        running += int(stats.get(f"{prefix}:{bound}", 0))
        buckets.append((str(float(bound)) if bound != "+Inf" else bound, running))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=float(stats.get(f"{prefix}_sum", 0)))


class QueueCollector:
    """Read at scrape time from Redis: queue depth, live workers and the workers' batch stats."""

    def __init__(self, queue: RedisQueue, capacities: dict[str, int]):
        self.queue = queue
        self.capacities = capacities  # per lane: the depth at which new work gets 503

    def collect(self):
        up = GaugeMetricFamily("inference_redis_up", "1 if Redis answered this scrape, else 0.")
        try:
            pipe = self.queue.redis.pipeline(transaction=False)
            for lane in LANES:
                pipe.llen(self.queue.keys.lane(lane))
            pipe.hgetall(self.queue.keys.stats)
            *depths, raw_stats = pipe.execute()
            workers = self.queue.live_workers()
        except redis.RedisError as exc:
            log.warning("metrics scrape could not read Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        stats = {key.decode(): value.decode() for key, value in raw_stats.items()}
        depth = GaugeMetricFamily(
            "inference_queue_depth", "Images waiting in the Redis queue, by lane.", labels=["lane"]
        )
        capacity = GaugeMetricFamily(
            "inference_queue_capacity", "Lane depth at which new work gets 503.", labels=["lane"]
        )
        for lane, waiting in zip(LANES, depths):
            depth.add_metric([lane], waiting)
            capacity.add_metric([lane], self.capacities[lane])
        yield depth
        yield capacity
        jobs = CounterMetricFamily("inference_jobs", "Jobs that ended, by final status.", labels=["status"])
        for final in ("done", "failed", "expired", "cancelled"):
            jobs.add_metric([final], int(stats.get(f"jobs:{final}", 0)))
        yield jobs
        yield GaugeMetricFamily(
            "inference_workers_live", "Model workers with a live heartbeat.", value=len(workers)
        )
        info = GaugeMetricFamily(
            "inference_worker_info",
            "One per live model worker (value 1).",
            labels=["worker", "host", "model"],
        )
        for worker_id, beat in sorted(workers.items()):
            info.add_metric([worker_id, beat.host, beat.model.name], 1)
        yield info
        yield _histogram(
            "inference_batch_size",
            "Images per model call, all workers.",
            stats,
            "batch_size",
            BATCH_SIZE_BUCKETS,
        )
        yield _histogram(
            "inference_model_seconds",
            "Model time per batch, all workers.",
            stats,
            "model_seconds",
            MODEL_SECONDS_BUCKETS,
        )
        yield CounterMetricFamily(
            "inference_dropped_expired",
            "Queued images dropped unprocessed because their deadline had passed.",
            value=int(stats.get("dropped_expired", 0)),
        )


class _Scrape:
    def __init__(self, *sources):
        self.sources = sources

    def collect(self):
        for source in self.sources:
            yield from source.collect()


def _process_metrics():
    """This process's metrics, or every process's of this server under gunicorn."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def register_metrics(app: Flask) -> None:
    @app.after_request
    def count_request(response: Response):
        # The route pattern, not the path, keeps the label set bounded whatever clients send.
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        method = request.method if request.method in ("GET", "POST", "HEAD", "DELETE") else "other"
        HTTP_REQUESTS.labels(method, endpoint, str(response.status_code)).inc()
        HTTP_LATENCY.labels(method, endpoint).observe(time.perf_counter() - request_log.started_at())
        return response

    @app.get("/metrics")
    def metrics():
        serving = services()
        capacities = {
            INTERACTIVE: serving.settings.max_queue_length,
            BULK: serving.settings.max_job_queue_length,
        }
        queue_metrics = QueueCollector(serving.queue, capacities)
        body = generate_latest(_Scrape(_process_metrics(), queue_metrics))
        return Response(body, mimetype=None, headers={"Content-Type": CONTENT_TYPE_LATEST})
