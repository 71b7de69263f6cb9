"""A scale-out deployment on loopback for tests: gunicorn web servers, model worker processes
and nginx from deploy/nginx.conf, all on one real redis-server; plus a load generator whose every
image has its own known answer, so a mixed-up reply is caught.
"""

from __future__ import annotations

import getpass
import io
import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import orjson
import redis
import requests
from PIL import Image

from harness.launch import GUNICORN, on_queue, queue_env, server_command
from harness.processes import ChildProcess, ServerProcess, http_status, wait_until
from serving.queue import RedisQueue
from serving.queue.connection import connect
from serving.queue.embedded import EmbeddedRedis
from serving.queue.keys import QueueKeys
from serving.queue.messages import ImageRef

from .support import COLOURS, ROOT, colour_queue, free_port, leftover_keys

T = TypeVar("T")

__all__ = ["ChildProcess", "wait_until"]

QUEUE = "scale"
HEARTBEAT_TTL = "1"  # a killed worker's messages go back to the queue within about two seconds
LABELS = list(COLOURS)
COLOUR_MODEL_SCALE = 20.0  # the colour model's logits: scale x mean pixel in 0..1 (tests/support.py)


def http_ok(url: str) -> bool:
    return http_status(url) == 200


class WebServer(ServerProcess):
    """gunicorn -c gunicorn.conf.py "run_keras_server:create_app()", configured by environment."""

    def __init__(self, name: str, redis_url: str, queue_name: str, log_dir: Path, **env: str):
        port = free_port()
        defaults = {"PORT": str(port), "WEB_CONCURRENCY": "1", "WEB_THREADS": "16", "LOG_LEVEL": "INFO"}
        settings = queue_env(redis_url, queue_name, **{**defaults, **env})  # the caller's env wins
        super().__init__(
            GUNICORN,
            port,
            ready_path="/healthz",
            ready_timeout=60,
            name=name,
            log_path=log_dir / f"{name}.log",
            env=settings,
        )
        self.start()

    def served_request_ids(self) -> set[str]:
        """Client request ids of the /predict requests in this server's access log."""
        return set(re.findall(r'"POST /predict [^"]*" \d+ .* request_id=(\S+)', self.log()))


class Worker(ChildProcess):
    """python run_keras_server.py --role worker, serving the tiny colour model."""

    def __init__(
        self, name: str, redis_url: str, queue_name: str, model: tuple[Path, Path], log_dir: Path, *extra: str
    ):
        args = [
            *server_command(*on_queue("worker", redis_url, queue_name)),
            "--model",
            str(model[0]),
            "--labels",
            str(model[1]),
            "--preprocess",
            "unit",
            "--top-k",
            "3",
            "--model-threads",
            "1",
            # The answers are checked to 1e-4 against the exact softmax; bf16, which --precision
            # auto picks on a CPU that has it (AVX512_BF16), is off by 1e-3.
            "--precision",
            "f32",
            "--model-name",
            "colour",  # the slow variant too: one model, one queue
            *extra,
        ]
        super().__init__(args, name=name, log_path=log_dir / f"{name}.log")
        self.start()
        self.redis_url = redis_url
        self.queue_name = queue_name
        self.worker_id: str | None = None

    def wait_ready(self, timeout: float = 90) -> Worker:
        """Wait for this process's heartbeat; it carries the worker id the answers name."""
        queue = RedisQueue(connect(self.redis_url, 2.0), colour_queue(self.queue_name))

        def my_id():
            return next((wid for wid, beat in queue.live_workers().items() if beat.pid == self.pid), None)

        self.worker_id = wait_until(my_id, timeout, f"{self.name}'s heartbeat", self.check_alive)
        queue.redis.close()
        return self


def start_workers(*workers: Worker) -> list[Worker]:
    """Workers load TensorFlow in parallel; wait for all of them."""
    return [worker.wait_ready() for worker in workers]


class Nginx(ChildProcess):
    """nginx running deploy/nginx.conf, its upstream and listen lines pointed at test ports."""

    def __init__(self, web_ports: list[int], log_dir: Path, name: str = "nginx"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        prefix = log_dir / name
        prefix.mkdir()
        self.access_log = prefix / "access.log"
        site = (ROOT / "deploy" / "nginx.conf").read_text()
        upstreams = "".join(
            f"    server 127.0.0.1:{port} max_fails=3 fail_timeout=5s;\n" for port in web_ports
        )
        site, count = re.subn(r"(    server 127\.0\.0\.1:\d+ [^\n]*\n)+", upstreams, site)
        assert count == 1, "deploy/nginx.conf: expected one block of upstream server lines"
        site = site.replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{self.port};")
        site = site.replace("/var/log/nginx/keras-server.access.log", str(self.access_log))
        (prefix / "keras-server.conf").write_text(site)
        user = f"user {getpass.getuser()};" if os.geteuid() == 0 else ""  # workers can read the tmp dir
        temp_paths = "".join(
            f"{kind}_temp_path {prefix}/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (prefix / "nginx.conf").write_text(
            f"{user}\nworker_processes 1;\npid {prefix}/nginx.pid;\ndaemon off;\n"
            f"error_log {prefix}/error.log warn;\nevents {{ worker_connections 512; }}\n"
            f"http {{\n{temp_paths}include {prefix}/keras-server.conf;\n}}\n"
        )
        args = [
            nginx_binary(),
            "-p",
            str(prefix),
            "-c",
            str(prefix / "nginx.conf"),
            "-e",
            str(prefix / "error.log"),
        ]
        super().__init__(args, name=name, log_path=log_dir / f"{name}.log")
        self.start()
        wait_until(
            lambda: http_status(self.url + "/healthz") is not None, 20, "nginx to listen", self.check_alive
        )

    def upstreams_used(self) -> dict[str, int]:
        """Upstream address -> /predict requests nginx sent there, from its access log."""
        counts: dict[str, int] = {}
        for upstream in re.findall(
            r'"POST /predict [^"]*" \d+ \d+ upstream=(\S+)', self.access_log.read_text()
        ):
            counts[upstream] = counts.get(upstream, 0) + 1
        return counts


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(path, os.X_OK)), None
    )


# Load with known answers ---------------------------------------------------------------


def tinted(index: int) -> tuple[bytes, dict[str, float]]:
    """A uniform image, different for every index below 300, and the colour model's exact answer.

    Uniform pixels survive resizing unchanged, so the expected probabilities are
    softmax(scale * rgb / 255), computed here without the model.
    """
    dominant = index % 3
    gaps = (20 + 4 * ((index // 3) % 10), 20 + 4 * ((index // 30) % 10))
    rgb = [200 - gaps[0], 200 - gaps[1]]
    rgb.insert(dominant, 200)
    logits = COLOUR_MODEL_SCALE * np.array(rgb, dtype=np.float64) / 255
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), tuple(rgb)).save(buffer, format="PNG")
    return buffer.getvalue(), dict(zip(LABELS, probabilities.tolist()))


@dataclass
class Outcome:
    index: int
    client_id: str
    status: int | None = None  # None: no HTTP answer at all (connection error or client timeout)
    body: dict = field(default_factory=dict)
    headers: dict = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0

    def correct(self, expected: dict[str, float], tolerance: float = 1e-4) -> bool:
        if self.status != 200 or not self.body.get("success"):
            return False
        got = {p["label"]: p["probability"] for p in self.body["predictions"]}
        return got.keys() == expected.keys() and all(
            abs(got[label] - expected[label]) < tolerance for label in expected
        )


def post_image(url: str, index: int, timeout: float = 30, tag: str = "t") -> Outcome:
    image, _ = tinted(index)
    outcome = Outcome(index, f"{tag}-{index}")
    started = time.monotonic()
    try:
        response = requests.post(
            url + "/predict",
            files={"image": (f"{index}.png", image)},
            headers={"X-Request-ID": outcome.client_id},
            timeout=timeout,
        )
        outcome.status = response.status_code
        outcome.headers = response.headers  # case-insensitive: servers differ in how they write X-Request-Id
        outcome.body = orjson.loads(response.content)
    except (requests.RequestException, orjson.JSONDecodeError) as exc:
        outcome.error = repr(exc)
    outcome.seconds = time.monotonic() - started
    return outcome


def fire(
    url: str, indexes, concurrency: int, timeout: float = 30, tag: str = "t", progress: list | None = None
) -> list[Outcome]:
    """POST each image from ``concurrency`` clients at once; ``progress`` collects outcomes as they land."""

    def one(index: int) -> Outcome:
        outcome = post_image(url, index, timeout, tag)
        if progress is not None:
            progress.append(outcome)
        return outcome

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, indexes))


@dataclass
class Tally:
    sent: int
    answered: int  # 200 with exactly this request's answer
    timed_out: int  # 504 from the web tier
    refused: int  # 503 (busy or Redis down), JSON with Retry-After
    lost: int  # no answer at all, or a status that is none of the above
    duplicated: int  # a server request id answered to more than one client
    mixed_up: int  # 200 carrying another request's answer, or another client's request id

    def __str__(self) -> str:
        return (
            f"sent={self.sent} answered={self.answered} timed_out={self.timed_out} "
            f"refused={self.refused} lost={self.lost} duplicated={self.duplicated} "
            f"mixed_up={self.mixed_up}"
        )


def tally(outcomes: list[Outcome]) -> Tally:
    answered = timed_out = refused = lost = mixed = 0
    seen: dict[str, int] = {}
    for outcome in outcomes:
        _, expected = tinted(outcome.index)
        request_id = outcome.body.get("request_id")
        if request_id:
            seen[request_id] = seen.get(request_id, 0) + 1
        if outcome.correct(expected) and outcome.headers.get("X-Request-ID") == outcome.client_id:
            answered += 1
        elif outcome.status == 200:
            mixed += 1
        elif outcome.status == 504 and outcome.body.get("success") is False:
            timed_out += 1
        elif (
            outcome.status == 503
            and outcome.body.get("success") is False
            and outcome.headers.get("Retry-After")
        ):
            refused += 1
        else:
            lost += 1
    duplicated = sum(count - 1 for count in seen.values())
    return Tally(len(outcomes), answered, timed_out, refused, lost, duplicated, mixed)


def distinct_answers(indexes, tolerance: float = 1e-4) -> bool:
    """Whether every image's expected answer differs from every other's by more than the tolerance,
    so that answering one request with another's result cannot pass the check."""
    vectors = np.array([list(tinted(i)[1].values()) for i in indexes])
    gaps = np.abs(vectors[:, None, :] - vectors[None, :, :]).max(axis=2)
    np.fill_diagonal(gaps, np.inf)
    return bool(gaps.min() > 10 * tolerance)


# The deployment the scale-out tests share ----------------------------------------------


class Cluster:
    def __init__(self, tmp_path, colour_model, slow_colour_model):
        self.log_dir = tmp_path
        self.model = colour_model
        self.slow_model = slow_colour_model
        self.redis_port = free_port()
        self.redis_server = EmbeddedRedis(port=self.redis_port).start()
        self.redis_url = self.redis_server.url
        self.webs: list[WebServer] = []
        self.nginx: Nginx | None = None
        self.workers: list[Worker] = []

    def start_web_tier(self) -> None:
        self.webs = [WebServer(f"web{i}", self.redis_url, QUEUE, self.log_dir) for i in (1, 2)]
        if nginx_binary():
            self.nginx = Nginx([web.port for web in self.webs], self.log_dir)

    @property
    def entry(self) -> str:
        """Where clients send requests: nginx when installed, else the first web server."""
        return self.nginx.url if self.nginx else self.webs[0].url

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def queue(self) -> RedisQueue:
        return RedisQueue(self.client(), colour_queue(QUEUE))

    def worker(self, name: str, *extra: str, slow: bool = False) -> Worker:
        """A worker process; ``slow`` ones spend long enough on each batch to be caught mid-batch."""
        worker = Worker(
            name,
            self.redis_url,
            QUEUE,
            self.slow_model if slow else self.model,
            self.log_dir,
            "--heartbeat-ttl",
            HEARTBEAT_TTL,
            *extra,
        )
        self.workers.append(worker)
        return worker

    def restart_redis(self) -> None:
        self.redis_server = EmbeddedRedis(port=self.redis_port).start()

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers = []

    def stop(self) -> None:
        self.stop_workers()
        for process in [self.nginx, *self.webs]:
            if process:
                process.stop()
        self.redis_server.stop()


def assert_no_leftovers(cluster: Cluster) -> None:
    """Once every worker has stopped (signed off or expired), the queue leaves no key at all."""
    client = cluster.client()
    assert leftover_keys(client, QUEUE) == []
    wait_until(
        lambda: not list(client.scan_iter(match=f"{QueueKeys(colour_queue(QUEUE)).tag}:worker:*")),
        10,
        "dead workers' heartbeats to expire",
    )


def held_request_ids(cluster: Cluster, worker: Worker) -> set[str]:
    raw = cluster.client().lrange(cluster.queue().keys.processing(worker.worker_id), 0, -1)
    return {ImageRef.from_bytes(ref).reply_to for ref in raw}


def freeze_holding(worker: Worker, holding: Callable[[], T], what: str, timeout: float = 30) -> T:
    """SIGSTOP ``worker`` once ``holding()`` (what it holds in Redis, truthy when enough) says it
    holds work it has not answered yet, and return what it holds, read once it is frozen. A stop
    that landed after the work was answered (answers and emptied lists are one transaction) is
    undone and tried again, so the caller always has work in the frozen worker's hands."""

    def frozen_holding() -> T | None:
        if not holding():
            return None
        worker.signal(signal.SIGSTOP)
        held = holding()
        if held:
            return held
        worker.signal(signal.SIGCONT)
        return None

    return wait_until(frozen_holding, timeout, f"{worker.name} to hold {what}", worker.check_alive)


def freeze_holding_a_batch(cluster: Cluster, worker: Worker, least: int, timeout: float = 30) -> set[str]:
    """``freeze_holding`` a batch of at least ``least`` interactive requests: their ids."""

    def held() -> set[str]:
        ids = held_request_ids(cluster, worker)
        return ids if len(ids) >= least else set()

    return freeze_holding(worker, held, f"a batch of {least}", timeout)
