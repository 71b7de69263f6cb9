"""The servers the benchmark measures, each a child process on a free port of loopback."""

from __future__ import annotations

import sys
from pathlib import Path

from harness.processes import ROOT, ServerProcess, free_port

__all__ = ["ROOT", "python_server"]


def python_server(args: list[str], log_path: Path, ready_path: str = "/readyz") -> ServerProcess:
    """``python <args> --port <free port>``, started once ``ready_path`` answers; stop it after."""
    port = free_port()
    return ServerProcess(
        [sys.executable, *args, "--port", str(port)],
        port,
        ready_path=ready_path,
        ready_timeout=180,
        log_path=log_path,
        env={"PYTHONPATH": str(ROOT)},
        name=log_path.stem,
    ).start()
