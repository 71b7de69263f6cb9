"""/metrics (Prometheus text) and the request log line, on live servers and a real redis-server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from harness.launch import GUNICORN, queue_env, server_command
from harness.processes import ChildProcess, ServerProcess, http_status
from serving.queue import RedisQueue
from serving.queue.keys import QueueKeys
from serving.queue.messages import Heartbeat, ModelInfo, Request
from serving.worker.stats import RedisBatchStats

from .support import (
    ROOT,
    colour_image,
    colour_model_args,
    colour_queue,
    free_port,
    pretend_worker,
    wait_until,
)


@pytest.fixture(scope="module")
def server(colour_server):
    return colour_server


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics as {(name, sorted labels): value}; fails on malformed text."""
    response = requests.get(url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (e.g. over every
    model version when no model is named)."""
    wanted = set(labels.items())
    return sum(v for (sample, have), v in samples.items() if sample == name and wanted <= set(have))


def scrape_until(url: str, condition) -> dict:
    """Scrape until ``condition(samples)`` holds: workers write their batch stats a moment later."""

    def attempt():
        samples = scrape(url)
        return samples if condition(samples) else None

    return wait_until(attempt, 15, "the scrape to show the batches")


@pytest.mark.slow
def test_counters_and_histograms_move_with_requests(server):
    before = scrape(server.url)
    for colour in ("red", "green", "blue", "red"):
        assert server.predict(colour_image(colour)).status_code == 200
    assert server.predict(b"not an image", name="x.jpg").status_code == 400
    images_before = value(before, "inference_batch_size_sum")
    after = scrape_until(server.url, lambda s: value(s, "inference_batch_size_sum") >= images_before + 4)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("inference_http_requests_total", method="POST", endpoint="/predict", status="200") == 4
    assert moved("inference_http_requests_total", method="POST", endpoint="/predict", status="400") == 1
    assert moved("inference_http_request_duration_seconds_count", method="POST", endpoint="/predict") == 5
    assert moved("inference_http_request_duration_seconds_sum", method="POST", endpoint="/predict") > 0
    batches = moved("inference_batch_size_count")
    assert 1 <= batches <= 4 and moved("inference_batch_size_sum") == 4  # every image in exactly one batch
    assert moved("inference_batch_size_bucket", le="+Inf") == batches
    assert moved("inference_model_seconds_count") == batches and moved("inference_model_seconds_sum") > 0
    assert value(after, "inference_redis_up") == 1
    assert value(after, "inference_workers_live") == 1
    assert value(after, "inference_queue_depth", lane="interactive") == 0
    assert value(after, "inference_queue_depth", lane="bulk") == 0
    assert value(after, "inference_queue_capacity", lane="interactive") == 256
    assert value(after, "inference_queue_capacity", lane="bulk") == 10_000
    [info] = [labels for name, labels in after if name == "inference_worker_info"]
    assert dict(info)["model"] == "colour"


@pytest.mark.slow
def test_expired_requests_are_counted_as_dropped(server, redis_server):
    before = value(scrape(server.url), "inference_dropped_expired_total")
    queue = RedisQueue(redis.Redis.from_url(redis_server.url), colour_queue(server.queue_name))
    stale = Request("stale-1", 0, np.zeros((32, 32, 3), np.uint8), 3, time.time() - 60, time.time() - 30)
    assert queue.enqueue("stale-1", [stale.to_bytes()], max_length=100, keep_seconds=1)
    wait_until(
        lambda: value(scrape(server.url), "inference_dropped_expired_total") == before + 1,
        15,
        "the expired request to be counted",
    )
    queue.redis.delete(queue.keys.waiting("stale-1"))


@pytest.mark.slow
def test_queue_depth_and_workers_are_read_from_redis_at_scrape_time(redis_server, serve):
    web = serve(
        "--role", "web", "--max-queue-length", "50", model=False, queue="depthq", ready_path="/healthz"
    )
    queue = RedisQueue(redis.Redis.from_url(redis_server.url), "depthq")
    try:
        assert value(scrape(web.url), "inference_workers_live") == 0
        for i in range(3):
            assert queue.enqueue(f"r{i}", [b"r%d" % i], max_length=50, keep_seconds=5)
        heartbeat = Heartbeat(ModelInfo("resnet50", (224, 224), 1000), host="gpu-7", pid=1, batch_size=8)
        pretend_worker(queue.redis, "depthq", "far-away-worker", heartbeat, ttl=30)
        samples = scrape(web.url)
        assert value(samples, "inference_queue_depth", lane="interactive") == 3
        assert value(samples, "inference_queue_capacity", lane="interactive") == 50
        assert value(samples, "inference_workers_live") == 1
        assert (
            value(samples, "inference_worker_info", worker="far-away-worker", host="gpu-7", model="resnet50")
            == 1
        )
    finally:
        queue.redis.delete(*queue.redis.keys(QueueKeys("depthq").tag + "*"))


@pytest.mark.slow
def test_metrics_answer_while_redis_is_down(serve):
    web = serve(
        "--role", "web", "--redis-url", f"redis://127.0.0.1:{free_port()}", model=False, ready_path="/healthz"
    )
    samples = scrape(web.url)
    assert value(samples, "inference_redis_up") == 0
    assert not any(name == "inference_queue_depth" for name, _ in samples)


@pytest.mark.slow
def test_gunicorn_processes_are_counted_together(redis_server, colour_model, tmp_path):
    """gunicorn.conf.py with two processes, one model worker process: every scrape counts every
    request once, and counts a previous run left in the metrics directory are wiped at start."""
    model_path, labels_path = colour_model
    port = free_port()
    multiproc_dir = tmp_path / "prometheus"
    multiproc_dir.mkdir()
    leave_stale_counts = (
        "from serving.web.metrics import HTTP_REQUESTS; "
        "HTTP_REQUESTS.labels('POST', '/predict', '200').inc(100)"
    )
    subprocess.run(
        [sys.executable, "-c", leave_stale_counts],
        cwd=ROOT,
        check=True,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)},
    )
    assert list(multiproc_dir.glob("*.db"))
    env = queue_env(
        redis_server.url,
        "gunq",
        PROMETHEUS_MULTIPROC_DIR=str(multiproc_dir),
        PORT=str(port),
        WEB_CONCURRENCY="2",
        WEB_THREADS="8",
    )
    web = ServerProcess(
        GUNICORN,
        port,
        ready_path=None,
        env=env,
        log_path=tmp_path / "web.log",
        name="gunicorn",
    )
    worker = ChildProcess(
        server_command("--role", "worker", *colour_model_args((model_path, labels_path))),
        env=env,
        log_path=tmp_path / "worker.log",
        name="worker",
    )
    url = web.url
    with web.start(), worker.start():
        wait_until(
            lambda: http_status(url + "/readyz") == 200, 120, "the web server and worker", worker.check_alive
        )
        image = colour_image("green")

        def predict(_):
            with requests.Session() as session:  # a new connection each: gunicorn spreads them
                return session.post(
                    url + "/predict", files={"image": ("g.png", image)}, timeout=30
                ).status_code

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(predict, range(24))) == [200] * 24
        pids = {re.search(r"_(\d+)\.db$", path.name).group(1) for path in multiproc_dir.glob("*.db")}
        assert len(pids) == 2, f"both gunicorn processes should have answered: {pids}"
        scrape_until(url, lambda s: value(s, "inference_batch_size_sum") == 24)
        for _ in range(4):  # whichever process answers the scrape
            samples = scrape(url)
            assert (
                value(
                    samples, "inference_http_requests_total", method="POST", endpoint="/predict", status="200"
                )
                == 24
            )
            assert value(samples, "inference_batch_size_sum") == 24
    redis.Redis.from_url(redis_server.url).delete(QueueKeys("gunq").stats)


def test_batch_stats_survive_a_redis_outage(redis_server):
    down = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    stats = RedisBatchStats(RedisQueue(down, "outageq"), flush_seconds=3600)
    stats.batch_done(3, 0.02)
    stats.dropped_expired(1)
    stats.flush()  # Redis is away: logged, kept for later, never raised into the worker
    stats.batch_done(5, 0.2)
    stats.redis = redis.Redis.from_url(redis_server.url)
    stats.flush()
    written = stats.redis.hgetall(QueueKeys("outageq").stats)
    stats.redis.delete(QueueKeys("outageq").stats)
    assert {key.decode(): float(amount) for key, amount in written.items()} == pytest.approx(
        {
            "batch_size:4": 1,
            "batch_size:8": 1,
            "batch_size_sum": 8,
            "dropped_expired": 1,
            "model_seconds:0.025": 1,
            "model_seconds:0.25": 1,
            "model_seconds_sum": 0.22,
        }
    )


def _log_fields(line: str) -> dict[str, str]:
    """Parse one key=value log line; quoted values are JSON strings."""
    message = line.split(": request ", 1)[1]
    return {
        key: json.loads(raw) if raw.startswith('"') else raw
        for key, raw in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', message)
    }


@pytest.mark.slow
def test_one_parseable_log_line_per_request(server):
    response = server.predict(colour_image("blue"), headers={"X-Request-ID": 'order 17 "rush"'})
    body = response.json()
    lines = wait_until(
        lambda: [line for line in server.log().splitlines() if f"id={body['request_id']}" in line],
        10,
        "the request's log line",
    )
    assert len(lines) == 1
    fields = _log_fields(lines[0])
    assert fields["method"] == "POST" and fields["path"] == "/predict" and fields["status"] == "200"
    assert fields["client_id"] == 'order 17 "rush"' and fields["batch"] == body["batch"]["id"]
    assert float(fields["ms"]) > 0


@pytest.mark.slow
@pytest.mark.parametrize("level, logged", [("INFO", True), ("WARNING", False)])
def test_log_level_flag_controls_the_request_line(serve, level, logged):
    web = serve("--role", "web", "--log-level", level, model=False, ready_path="/healthz")
    wrong_method = requests.get(web.url + "/predict", headers={"X-Request-ID": "probe-1"}, timeout=10)
    assert wrong_method.status_code == 405
    web.stop()
    lines = [line for line in web.log().splitlines() if "client_id=probe-1" in line]
    assert len(lines) == (1 if logged else 0)


def test_gunicorn_conf_makes_a_private_metrics_directory_when_none_is_named():
    probe = "\n".join(
        [
            "import os, pathlib, runpy",
            "conf = runpy.run_path('gunicorn.conf.py')",
            "directory = conf['METRICS_DIR']",
            "print(directory == pathlib.Path(os.environ['PROMETHEUS_MULTIPROC_DIR']), directory.is_dir())",
            "conf['on_exit'](None)",
            "print(directory.exists())",
        ]
    )
    env = {key: val for key, val in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "False"]  # set for the app, made, removed on exit
