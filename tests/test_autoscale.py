"""KEDA's Redis list rule against real worker processes on a real Redis: a burst scales the workers
from zero up and back to zero (SIGTERM on the way down), and every request is answered once."""

from __future__ import annotations

import pytest

from bench.autoscale import (
    Autoscaler,
    ScalingRule,
    format_timeline,
    images_computed,
    publish_model,
    worker_process,
)
from harness.launch import on_queue
from serving.queue import RedisQueue
from serving.queue.connection import connect

from .cluster import WebServer, distinct_answers, fire, tally
from .support import colour_model_args, colour_queue, leftover_keys, wait_until

pytestmark = pytest.mark.slow  # starts and stops worker processes

QUEUE = "autoscaleq"


def test_a_burst_scales_workers_from_zero_and_back(redis_server, colour_model, tmp_path):
    queue = RedisQueue(connect(redis_server.url, timeout=5), colour_queue(QUEUE))
    worker_args = [
        *on_queue(None, redis_server.url, QUEUE, *colour_model_args(colour_model)),
        "--top-k",
        "3",
        "--model-threads",
        "1",
        "--heartbeat-ttl",
        "2",
        "--batch-wait-ms",
        "20",
    ]
    web = WebServer("autoscale-web", redis_server.url, QUEUE, tmp_path, CLIENT_TIMEOUT="60", WEB_THREADS="32")
    try:
        publish_model(worker_process(worker_args, tmp_path, 0), queue)  # the deployment's first start
        wait_until(lambda: not queue.live_workers(), 10, "the first worker to sign off")
        rule = ScalingRule(
            list_length=8, min_replicas=0, max_replicas=3, polling_seconds=0.5, cooldown_seconds=3
        )
        scaler = Autoscaler(
            queue, rule, lambda n: worker_process(worker_args, tmp_path, n), images_computed(queue)
        ).start()
        indexes = range(300)
        assert distinct_answers(indexes)
        outcomes = fire(web.url, indexes, concurrency=32, timeout=90)
        wait_until(lambda: not scaler.workers and not queue.depth(), 30, "the workers to scale back to zero")
        scaler.stop()
    finally:
        web.stop()
    counts = tally(outcomes)
    workers_seen = [moment.workers for moment in scaler.timeline]
    print(
        f"\nautoscaled burst: {counts}; workers 0 -> {scaler.peak} -> 0\n{format_timeline(scaler.timeline)}"
    )
    assert counts.answered == counts.sent == 300 and counts.duplicated == 0
    assert workers_seen[0] == 0 and workers_seen[-1] == 0 and scaler.peak >= 2
    assert leftover_keys(queue.redis, QUEUE) == []
