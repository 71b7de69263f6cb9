"""Processes for the tests and the benchmark: children run from the repository root, servers
started once they answer, free ports, and polling. Not part of the service."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests

from serving.child_process import ChildProcess as _ChildProcess
from serving.child_process import wait_until

__all__ = ["ROOT", "ChildProcess", "ServerProcess", "free_port", "http_status", "wait_until"]

ROOT = Path(__file__).resolve().parents[1]
QUIET_TENSORFLOW = {"TF_CPP_MIN_LOG_LEVEL": "2"}  # the harness's logs stay readable


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The status of a GET, or None when nothing answers."""
    try:
        return requests.get(url, timeout=timeout).status_code
    except requests.RequestException:
        return None


class ChildProcess(_ChildProcess):
    """A child process run from the repository root, with TensorFlow's start-up chatter off."""

    def __init__(
        self,
        args: Sequence[str | Path],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = ROOT,
        **kwargs: Any,
    ):
        super().__init__(args, env={**QUIET_TENSORFLOW, **(env or {})}, cwd=cwd, **kwargs)


class ServerProcess(ChildProcess):
    """A child process that serves HTTP on ``port`` of loopback; ``start`` returns once
    ``ready_path`` answers 200 (or, with ``ready_path=None``, at once)."""

    def __init__(
        self,
        args: Sequence[str | Path],
        port: int,
        *,
        ready_path: str | None = "/readyz",
        ready_timeout: float = 120.0,
        **kwargs: Any,
    ):
        super().__init__(args, **kwargs)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ready_path = ready_path
        self.ready_timeout = ready_timeout

    def start(self) -> ServerProcess:
        super().start()
        if self.ready_path:
            ready_url = self.url + self.ready_path
            try:
                wait_until(
                    lambda: http_status(ready_url) == 200,
                    self.ready_timeout,
                    f"{self.name} to answer {self.ready_path}",
                    self.check_alive,
                    interval=0.2,
                )
            except BaseException:
                self.stop()
                raise
        return self
