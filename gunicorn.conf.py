"""gunicorn settings for the production web tier:

    gunicorn -c gunicorn.conf.py "run_keras_server:create_app()"

Read from the same environment variables as `python run_keras_server.py` (settings.py):
HOST, PORT, MAX_CONNECTIONS, IDLE_TIMEOUT, CLIENT_TIMEOUT, LOG_LEVEL, REDIS_URL, ... Processes per server:
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
# Handlers spend their time waiting on Redis, not on the CPU: gunicorn's stock gevent worker
# (needs gunicorn[gevent]) makes every connection a greenlet, so a waiting client holds no
# thread. Configured through its public settings only; it monkey-patches before loading the app.
worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_connections = _settings.max_connections  # per process: long-polls, event streams, headroom
backlog = 2048
# Idle seconds (whole) before or between requests, and also the gevent worker's deadline for a
# request line and headers (never 0: that removes the deadline). Slow bodies: serving/web/body.py.
keepalive = max(1, round(_settings.idle_timeout))
# The gevent worker pings the arbiter from its hub, so this catches a hub blocked this long.
timeout = int(2 * _settings.request_lifetime)
# On SIGTERM, requests in flight get their full client_timeout to be answered (or 504) before exit.
graceful_timeout = int(_settings.request_lifetime)
STOP_WATCH_SECONDS = 0.2  # how soon a stopping worker ends its long-polls and event streams
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


def post_worker_init(worker: Worker) -> None:
    """The app is loaded: its objects out of the cyclic collector's way (with a thousand
    requests parked, a full collection that walks them stalls every one). A greenlet watches
    for the graceful stop: long-polls are then answered and event streams ended at once
    (serving/web/server_stop.py) instead of being cut at graceful_timeout."""
    import gc

    import gevent

    from serving.web.server_stop import end_waits

    def end_waits_on_stop() -> None:
        while worker.alive:  # set False by gunicorn's SIGTERM handler; read, never written
            gevent.sleep(STOP_WATCH_SECONDS)
        end_waits()

    gevent.spawn(end_waits_on_stop)
    gc.collect()
    gc.freeze()


def on_exit(server: Arbiter) -> None:
    if _own_metrics_dir:
        shutil.rmtree(METRICS_DIR, ignore_errors=True)
