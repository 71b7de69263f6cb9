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

import logging
import os
import time
from collections.abc import Iterator

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
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from serving.queue.messages import BULK, INTERACTIVE, LANES, Heartbeat
from serving.queue.stats import BATCH_SIZE_BUCKETS, MODEL_SECONDS_BUCKETS
from serving.web import request_log
from serving.web.model_directory import ModelDirectory
from serving.web.services import services

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

HTTP_REQUESTS = Counter(
    "inference_http_requests",
    "HTTP requests answered, by route and status.",
    ["method", "endpoint", "status"],
)
TENANT_REQUESTS = Counter(
    "inference_tenant_requests",
    "Requests by tenant (registered names only, never keys) and outcome: accepted, or refused "
    "for its rate, its queued images, its open jobs, or a model it may not use.",
    ["tenant", "outcome"],
)
AUTH_FAILURES = Counter(
    "inference_auth_failures",
    "Requests refused with 401: no API key, or one that is unknown or revoked.",
    ["reason"],
)
HTTP_LATENCY = Histogram(
    "inference_http_request_duration_seconds",
    "Time from request received to response ready, by route.",
    ["method", "endpoint"],
    buckets=LATENCY_BUCKETS,
)


def _buckets(
    stats: dict[str, str], prefix: str, bounds: tuple[float, ...]
) -> tuple[list[tuple[str, float]], float]:
    """Cumulative Prometheus buckets and the sum, from the per-bucket counts the workers wrote."""
    buckets: list[tuple[str, float]] = []
    running = 0
    edges: tuple[float | str, ...] = (*bounds, "+Inf")
    for bound in edges:
        running += int(stats.get(f"{prefix}:{bound}", 0))
        buckets.append((str(float(bound)) if bound != "+Inf" else "+Inf", running))
    return buckets, float(stats.get(f"{prefix}_sum", 0))


class QueueCollector:
    """Read at scrape time from Redis, per served model version (labels ``model`` and
    ``version``; only versions in the catalogue, so the label set stays bounded): queue depth,
    live workers and the workers' batch stats."""

    def __init__(self, directory: ModelDirectory, capacities: dict[str, int]):
        self.directory = directory
        self.capacities = capacities  # per lane: the depth at which new work gets 503

    def _read(self) -> list[tuple[list[str], list[int], dict[str, str], dict[str, Heartbeat]]]:
        """Per version: its labels, lane depths, batch stats and live workers."""
        state = self.directory.state(fresh=True)
        found = []
        for name in state.models():
            for version, served in sorted(state.versions[name].items()):
                queue = self.directory.queue(served.queue)
                pipe = queue.redis.pipeline(transaction=False)
                for lane in LANES:
                    pipe.llen(queue.keys.lane(lane))
                pipe.hgetall(queue.keys.stats)
                *depths, raw_stats = pipe.execute()
                stats = {key.decode(): value.decode() for key, value in raw_stats.items()}
                workers = queue.live_workers() if state.is_live(name, version) else {}
                found.append(([name, version], depths, stats, workers))
        return found

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("inference_redis_up", "1 if Redis answered this scrape, else 0.")
        try:
            versions = self._read()
        except redis.RedisError as exc:
            log.warning("metrics scrape could not read Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        watch = self.directory.base.watch
        yield CounterMetricFamily(
            "inference_redis_primary_changes",
            "Times this process found the Redis primary at a new address (a failover it saw).",
            value=watch.changes,
        )
        primary = GaugeMetricFamily(
            "inference_redis_primary_info",
            "The Redis primary this process talks to (value 1).",
            labels=["address", "via"],
        )
        primary.add_metric([watch.address or "", watch.how], 1)
        yield primary
        labels = ["model", "version"]
        depth = GaugeMetricFamily(
            "inference_queue_depth",
            "Images waiting in the Redis queue, by model version and lane.",
            labels=[*labels, "lane"],
        )
        capacity = GaugeMetricFamily(
            "inference_queue_capacity", "Lane depth at which new work gets 503.", labels=[*labels, "lane"]
        )
        jobs = CounterMetricFamily(
            "inference_jobs",
            "Jobs that ended, by model version and final status.",
            labels=[*labels, "status"],
        )
        live = GaugeMetricFamily(
            "inference_workers_live", "Model workers with a live heartbeat.", labels=labels
        )
        info = GaugeMetricFamily(
            "inference_worker_info",
            "One per live model worker (value 1).",
            labels=["worker", "host", "model", "version"],
        )
        dropped = CounterMetricFamily(
            "inference_dropped_expired",
            "Queued images dropped unprocessed because their deadline had passed.",
            labels=labels,
        )
        sizes = HistogramMetricFamily(
            "inference_batch_size", "Images per model call, all workers.", labels=labels
        )
        seconds = HistogramMetricFamily(
            "inference_model_seconds", "Model time per batch, all workers.", labels=labels
        )
        for version_labels, depths, stats, workers in versions:
            for lane, waiting in zip(LANES, depths):
                depth.add_metric([*version_labels, lane], waiting)
                capacity.add_metric([*version_labels, lane], self.capacities[lane])
            for final in ("done", "failed", "expired", "cancelled"):
                jobs.add_metric([*version_labels, final], int(stats.get(f"jobs:{final}", 0)))
            live.add_metric(version_labels, len(workers))
            for worker_id, beat in sorted(workers.items()):
                info.add_metric([worker_id, beat.host, beat.model.name, beat.model.version], 1)
            dropped.add_metric(version_labels, int(stats.get("dropped_expired", 0)))
            sizes.add_metric(version_labels, *_buckets(stats, "batch_size", BATCH_SIZE_BUCKETS))
            seconds.add_metric(version_labels, *_buckets(stats, "model_seconds", MODEL_SECONDS_BUCKETS))
        if not versions:  # no model served yet: the totals are 0, not absent
            live.add_metric(["", ""], 0)
        yield from (depth, capacity, jobs, live, info, sizes, seconds, dropped)


class _Scrape:
    def __init__(self, *sources: Collector) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            yield from source.collect()


def _process_metrics() -> CollectorRegistry:
    """This process's metrics, or every process's of this server under gunicorn."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # unannotated in prometheus-client
    return registry


def register_metrics(app: Flask) -> None:
    # Known label values start at 0, so rate() sees the first failure. Here, not at import: in
    # multiprocess mode a value makes a file named by its pid, and a worker imports this module.
    for reason in ("missing", "invalid"):
        AUTH_FAILURES.labels(reason)

    @app.after_request
    def count_request(response: Response) -> Response:
        # The route pattern, not the path, keeps the label set bounded whatever clients send.
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        method = request.method if request.method in ("GET", "POST", "HEAD", "DELETE") else "other"
        HTTP_REQUESTS.labels(method, endpoint, str(response.status_code)).inc()
        HTTP_LATENCY.labels(method, endpoint).observe(time.perf_counter() - request_log.started_at())
        return response

    @app.get("/metrics")
    def metrics() -> Response:
        serving = services()
        capacities = {
            INTERACTIVE: serving.settings.max_queue_length,
            BULK: serving.settings.max_job_queue_length,
        }
        queue_metrics = QueueCollector(serving.models, capacities)
        body = generate_latest(_Scrape(_process_metrics(), queue_metrics))
        return Response(body, mimetype=None, headers={"Content-Type": CONTENT_TYPE_LATEST})
