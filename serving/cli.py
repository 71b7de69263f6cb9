"""The command line: one process per role (``run_keras_server.py`` and the ``keras-redis-server``
script both run ``main``).

    --role all      web + model worker thread in one process (the default; finds or starts Redis)
    --role web      HTTP only (in production: gunicorn, gunicorn.conf.py)
    --role worker   a model worker only

A process that serves HTTP is monkey-patched for gevent before this module is imported
(serving/patching.py, from run_keras_server.py and serving/__main__.py): every HTTP connection
is a greenlet; a --role worker process is not patched. The model worker of the one-process
mode is a child process running --role worker (serving/servers/worker_child.py): it dies with
its parent and stops after the web side has drained.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from types import FrameType

import gevent
import gevent.event

from serving.logs import configure_logging
from serving.models.classifier import ModelUnavailable  # no TensorFlow import: web roles load no model
from serving.queue.embedded import resolve_redis
from serving.servers.gevent_server import serve
from serving.servers.worker_child import WorkerChild
from serving.settings import SettingsError, load_settings
from serving.web.app import create_app
from serving.web.memory import limit_arenas
from serving.web.server_stop import end_waits
from serving.worker.factory import create_worker

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


def _on_gevent_stop_signals(stop: Callable[[], None]) -> None:
    """The same for a server on gevent's hub: the handler runs as a greenlet, not between two
    bytecodes of whatever the main thread was doing."""
    main_greenlet = gevent.getcurrent()
    stopping = False

    def handler(signum: int) -> None:
        nonlocal stopping
        if stopping:
            log.warning("received signal %d again: exiting now", signum)
            main_greenlet.throw(SystemExit(1))
            return
        stopping = True
        log.info("received signal %d: finishing the work in hand, then exiting", signum)
        stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, handler, signum)


def freeze_startup_objects() -> None:
    """Everything imported so far out of the cyclic garbage collector's way: with a thousand
    requests parked, a full collection that walks the import-time objects stalls them all."""
    import gc

    gc.collect()
    gc.freeze()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if settings.role != "worker":
        limit_arenas()  # a web process's threads decode images; its model workers are elsewhere

    embedded = None
    if settings.role == "all":  # one process on a laptop: find a Redis, or start one
        redis_url, embedded = resolve_redis(settings.redis_url)
        settings = settings.replace(redis_url=redis_url)
        if embedded and settings.auth == "keys":  # keys could never be added to a private Redis
            embedded.stop()
            print(
                "error: --auth keys needs a Redis that `python -m serving.tenants` can reach too: "
                "start one and pass --redis-url (none answers at the default, and the embedded "
                "one is private to this process).",
                file=sys.stderr,
            )
            return 2
    all_in_one_redis = settings.redis_url or ""
    try:
        if settings.role == "worker":
            worker = create_worker(settings)
            _on_stop_signals(worker.stop)  # the batch in hand is answered first
            worker.run()
            return 0
        app = create_app(settings)
        stop = gevent.event.Event()
        # Stop listening, answer the requests in flight (the worker keeps running), exit.
        _on_gevent_stop_signals(stop.set)
        # A process of its own, unpatched: measured faster than a thread beside the hub.
        child = WorkerChild(argv, all_in_one_redis).start(stop.set) if settings.role == "all" else None
        freeze_startup_objects()
        serve(
            app,
            host=settings.host,
            port=settings.port,
            max_connections=settings.max_connections,
            idle_timeout=settings.idle_timeout,
            read_timeout=settings.read_timeout,
            drain_seconds=settings.request_lifetime,
            stop=stop,
            end_waits=end_waits,  # long-polls answered and event streams ended, not cut
        )
        if child is not None:
            child.stop(timeout=settings.client_timeout)
            if child.exit_code:
                return 1
        return 0
    except KeyboardInterrupt:
        return 0
    except ModelUnavailable as exc:
        log.error("%s", exc)
        return 1
    finally:
        if embedded:
            embedded.stop()
