"""gunicorn settings for the production web tier:

    gunicorn -c gunicorn.conf.py "run_keras_server:create_app()"

Read from the same environment variables as `python run_keras_server.py` (settings.py):
HOST, PORT, WEB_THREADS, CLIENT_TIMEOUT, LOG_LEVEL, REDIS_URL, ... Processes per server:
WEB_CONCURRENCY (gunicorn's own variable). Any gunicorn flag given on the command line wins.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from serving.logs import configure_logging
from serving.settings import load_settings
from serving.web.memory import limit_arenas

if TYPE_CHECKING:
    from gunicorn.arbiter import Arbiter
    from gunicorn.workers.base import Worker

_settings = load_settings([])

# /metrics sums the HTTP counters of all this server's processes through files in one directory
# (prometheus-client's multiprocess mode), which must be set before the app is imported and empty
# when the server starts. A private temporary one unless the operator names one.
_own_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="keras-server-metrics-")
METRICS_DIR = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])

bind = f"{_settings.host}:{_settings.port}"
# Handlers spend their time blocked on Redis, not on the CPU: threads, not processes, carry the
# load. gthread, guarded against idle and slow connections (serving/servers/gunicorn_worker.py).
worker_class = "serving.servers.gunicorn_worker.GuardedThreadWorker"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = _settings.web_threads
worker_connections = _settings.max_connections  # at the limit the longest-idle one makes way
keepalive = max(1, round(_settings.idle_timeout))  # idle seconds (whole), before or between requests
# A gthread worker keeps pinging the arbiter while its threads wait, so this only catches a hung
# process: one silent for longer than any request can take, twice over.
timeout = int(2 * _settings.request_lifetime)
# On SIGTERM, requests in flight get their full client_timeout to be answered (or 504) before exit.
graceful_timeout = int(_settings.request_lifetime)
loglevel = _settings.log_level.lower()
# With --log-format json the app's own request line (JSON, one per request) stands in for it.
accesslog = None if _settings.log_format == "json" else "-"
errorlog = "-"
# pid tells the web processes apart in a shared log; the request id ties a line to the client's.
access_log_format = '%(h)s "%(r)s" %(s)s %(b)sB %(M)sms pid=%(p)s request_id=%({x-request-id}o)s'


def on_starting(server: Arbiter) -> None:
    """The app's own log lines (one per /predict with its batch id) go to stderr beside gunicorn's;
    counts left by an earlier run are wiped."""
    configure_logging(_settings.log_level, _settings.log_format, with_pid=True)
    METRICS_DIR.mkdir(parents=True, exist_ok=True)
    for stale in METRICS_DIR.glob("*.db"):
        stale.unlink()


def post_fork(server: Arbiter, worker: Worker) -> None:
    """Two malloc arenas for the web process's threads (serving/web/memory.py)."""
    limit_arenas()


def on_exit(server: Arbiter) -> None:
    if _own_metrics_dir:
        shutil.rmtree(METRICS_DIR, ignore_errors=True)
