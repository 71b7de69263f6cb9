"""deploy/supervisord.conf for real: it starts Redis, the web servers and a model worker, and starts
again whatever is killed. Ports and paths are pointed at the test's own; nothing else changes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import redis
import requests

from serving.queue import RedisQueue
from serving.queue.embedded import redis_server_binary

from .cluster import ChildProcess, http_ok, post_image, tally, tinted, wait_until
from .support import ROOT, colour_queue, free_port

SUPERVISORD = shutil.which(
    "supervisord", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(SUPERVISORD is None, reason="supervisor is not installed (requirements-dev.txt)"),
]


def free_port_pair() -> int:
    """A number N such that ports N1 and N2 (the config's PORT="800%(process_num)d") are free."""
    for _ in range(100):
        base = free_port() // 10
        if base * 10 + 2 < 65536 and all(_free(base * 10 + i) for i in (1, 2)):
            return base
    raise RuntimeError("no two free neighbouring ports")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def render_config(directory: Path, redis_port: int, web_base: int) -> Path:
    text = (ROOT / "deploy" / "supervisord.conf").read_text()
    replacements = {
        "/tmp/keras-server": str(directory / "keras-server"),
        "childlogdir=/tmp": f"childlogdir={directory}",
        "6379": str(redis_port),
        'PORT="800%(process_num)d"': f'PORT="{web_base}%(process_num)d"',
        "%(here)s/..": str(ROOT),
        "numprocs=2\nnumprocs_start=0": "numprocs=1\nnumprocs_start=0",  # one worker is enough here
    }
    for old, new in replacements.items():
        assert old in text, f"deploy/supervisord.conf no longer contains {old!r}"
        text = text.replace(old, new)
    path = directory / "supervisord.conf"
    path.write_text(text)
    return path


def live_worker_pids(queue: RedisQueue) -> set[int]:
    try:
        return {beat.pid for beat in queue.live_workers().values()}
    except redis.RedisError:
        return set()


def test_supervisord_starts_everything_and_restarts_what_dies(tmp_path, colour_model):
    redis_port, web_base = free_port(), free_port_pair()
    config = render_config(tmp_path, redis_port, web_base)
    tool_dirs = [str(Path(redis_server_binary()).parent), str(Path(sys.executable).parent)]
    env = {
        "PATH": os.pathsep.join([*tool_dirs, os.environ["PATH"]]),
        "MODEL": str(colour_model[0]),
        "LABELS": str(colour_model[1]),
        "PREPROCESS": "unit",
        "PRECISION": "f32",  # answers are checked to 1e-4; bf16 (auto on a CPU with it) is off by 1e-3
        "TOP_K": "3",
        "MODEL_THREADS": "1",
        "HEARTBEAT_TTL": "1",
        "WEB_THREADS": "8",
    }
    webs = [f"http://127.0.0.1:{web_base}{i}" for i in (1, 2)]
    queue = RedisQueue(redis.Redis.from_url(f"redis://127.0.0.1:{redis_port}/0"), colour_queue("image_queue"))
    supervisor = ChildProcess(
        [SUPERVISORD, "-c", str(config)], name="supervisord", env=env, log_path=tmp_path / "supervisord.log"
    ).start()
    try:
        for web in webs:
            wait_until(
                lambda web=web: http_ok(web + "/readyz"), 120, f"{web} to be ready", supervisor.check_alive
            )
        assert tally([post_image(web, i) for i, web in enumerate(webs)]).answered == 2

        # kill -9 the worker: supervisord starts a new one, which serves.
        (first_pid,) = live_worker_pids(queue)
        os.kill(first_pid, signal.SIGKILL)
        wait_until(lambda: live_worker_pids(queue) - {first_pid}, 120, "a new worker")
        assert tally([post_image(web, 10 + i) for i, web in enumerate(webs)]).answered == 2

        # kill -9 a web server's gunicorn master: it comes back on its port.
        master_pid = _listener_pid(tmp_path, 1)
        assert master_pid
        orphans = psutil.Process(master_pid).children()
        assert orphans, "a gunicorn master runs worker processes"
        os.kill(master_pid, signal.SIGKILL)
        wait_until(lambda: _listener_pid(tmp_path, 1) not in (None, master_pid), 60, "a new web-1 master")
        # The dead master's workers hold the port and answer until they see their parent gone
        # (within a second); only after that does an answer prove the new master serves.
        wait_until(lambda: not any(map(_running, orphans)), 30, "the old web-1 workers to exit")
        wait_until(lambda: http_ok(webs[0] + "/readyz"), 60, "web-1 to serve again")
        assert post_image(webs[0], 20).correct(tinted(20)[1])

        # kill -9 Redis: it is started again, and the same web servers and worker serve again.
        redis_pid = queue.redis.info("server")["process_id"]
        os.kill(redis_pid, signal.SIGKILL)
        wait_until(lambda: all(http_ok(web + "/readyz") for web in webs), 60, "service after Redis restart")
        assert tally([post_image(web, 30 + i) for i, web in enumerate(webs)]).answered == 2
    finally:
        queue.redis.close()
        exit_code = supervisor.stop(timeout=90)
    assert exit_code == 0
    for web in webs:
        with pytest.raises(requests.ConnectionError):
            requests.get(web + "/healthz", timeout=2)


def _listener_pid(directory: Path, number: int) -> int | None:
    """The gunicorn master pid of web-<number>, from supervisorctl."""
    ctl = Path(SUPERVISORD).with_name("supervisorctl")
    result = subprocess.run(
        [str(ctl), "-c", str(directory / "supervisord.conf"), "pid", f"web:web-{number}"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    text = result.stdout.strip()
    return int(text) if text.isdigit() and text != "0" else None


def _running(process: psutil.Process) -> bool:
    """True while the process runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
