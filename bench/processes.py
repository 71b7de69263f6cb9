"""Child processes the benchmark measures: a server on a free port, and a private Redis."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ChildServer:
    """A Python HTTP server started as ``python <args> --port <free port>``, stopped on exit."""

    def __init__(self, args: list[str], log_path: Path, ready_path: str = "/readyz"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, *args, "--port", str(self.port)]
        self.log_path = log_path
        self.ready_path = ready_path
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ChildServer:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.args, cwd=ROOT, env=env, stdout=log,
                                            stderr=subprocess.STDOUT)
        give_up = time.monotonic() + 180
        while time.monotonic() < give_up:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.args} exited with {self.process.returncode}; "
                                   f"see {self.log_path}")
            try:
                if requests.get(self.url + self.ready_path, timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)  # waiting for a child process to load its model
        self.__exit__()
        raise RuntimeError(f"{self.args} not ready in 180 s; see {self.log_path}")

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
