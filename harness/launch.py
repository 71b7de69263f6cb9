"""How the tests and the benchmark start the service's processes: one home for the launch lines,
so a role, its Redis and its queue are named the same way everywhere."""

from __future__ import annotations

import sys
from pathlib import Path

from harness.processes import ROOT, ServerProcess, free_port

__all__ = ["GUNICORN", "SERVER", "on_queue", "python_server", "queue_env", "server_command"]

SERVER = ROOT / "run_keras_server.py"
# The production web tier, as deploy/entrypoint.sh runs it.
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "run_keras_server:create_app()"]


def on_queue(role: str | None, redis_url: str, queue: str, *flags: str) -> list[str]:
    """The flags that put a ``run_keras_server.py`` process of ``role`` (None: the default, web +
    worker) on ``queue`` of the Redis at ``redis_url``, then ``flags``."""
    role_flags = ["--role", role] if role else []
    return [*role_flags, "--redis-url", redis_url, "--queue-name", queue, *flags]


def queue_env(redis_url: str, queue: str, **more: str) -> dict[str, str]:
    """The same as environment variables, for processes configured that way (gunicorn)."""
    return {"REDIS_URL": redis_url, "QUEUE_NAME": queue, **more}


def server_command(*args: str) -> list[str]:
    """``python run_keras_server.py <args>``."""
    return [sys.executable, str(SERVER), *args]


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
