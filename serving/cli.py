"""The command line: one process per role (``run_keras_server.py`` and the ``keras-redis-server``
script both run ``main``).

    --role all      web + model worker thread in one process (the default; finds or starts Redis)
    --role web      HTTP only (in production: gunicorn, gunicorn.conf.py)
    --role worker   a model worker only
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from serving.logs import configure_logging
from serving.models.classifier import ModelUnavailable  # no TensorFlow import: web roles load no model
from serving.queue.embedded import resolve_redis
from serving.servers.waitress_server import HttpServer
from serving.settings import SettingsError, load_settings
from serving.web.app import create_app
from serving.web.memory import limit_arenas
from serving.worker.factory import create_worker

if TYPE_CHECKING:
    from serving.worker.loop import ModelWorker

__all__ = ["main"]

log = logging.getLogger("serving")


def _on_stop_signals(stop: Callable[[], None]) -> None:
    """SIGTERM or Ctrl-C: stop gracefully with ``stop``; a second one exits at once."""
    stopping = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            log.warning("received signal %d again: exiting now", signum)
            raise SystemExit(1)
        stopping = True
        log.info("received signal %d: finishing the work in hand, then exiting", signum)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if settings.role == "web":
        limit_arenas()  # a web process's threads decode images; its model workers are elsewhere

    embedded = None
    worker: ModelWorker | None
    if settings.role == "all":  # one process on a laptop: find a Redis, or start one
        redis_url, embedded = resolve_redis(settings.redis_url)
        settings = settings.replace(redis_url=redis_url)
    try:
        if settings.role == "worker":
            worker = create_worker(settings)
            _on_stop_signals(worker.stop)  # the batch in hand is answered first
            worker.run()
            return 0
        worker = create_worker(settings) if settings.role == "all" else None
        http = HttpServer(create_app(settings), settings)
        # Stop listening, answer the requests in flight (the worker thread keeps running), exit.
        _on_stop_signals(http.request_stop)
        worker_thread = (
            threading.Thread(target=worker.run, name="model-worker", daemon=True) if worker else None
        )
        if worker_thread:
            worker_thread.start()
        http.run()
        if worker and worker_thread:
            worker.stop()
            worker_thread.join(timeout=settings.client_timeout)
        return 0
    except KeyboardInterrupt:
        return 0
    except ModelUnavailable as exc:
        log.error("%s", exc)
        return 1
    finally:
        if embedded:
            embedded.stop()
