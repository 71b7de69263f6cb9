"""Redis-queued, batching Keras image classification over HTTP.

    python run_keras_server.py                 # web + model worker in one process
    python run_keras_server.py --role web      # HTTP only (or: gunicorn "run_keras_server:create_app()")
    python run_keras_server.py --role worker   # model worker only

Run with --help for every setting; each is also an environment variable (see settings.py).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

from flask import Flask

from serving.http_server import HttpServer
from serving.queue import RedisQueue, connect
from serving.redis_server import DEFAULT_URL, resolve_redis
from serving.web import build_app
from settings import Settings, SettingsError, load_settings

log = logging.getLogger("run_keras_server")


def create_app(settings: Settings | None = None) -> Flask:
    """The Flask app, configured from the environment when no settings are given (gunicorn)."""
    settings = settings or load_settings([])
    # Blocking pops wait up to client_timeout; the socket timeout only catches a dead Redis.
    client = connect(settings.redis_url or DEFAULT_URL, read_timeout=settings.client_timeout + 5)
    return build_app(settings, RedisQueue(client, settings.queue_name))


def create_worker(settings: Settings, redis_url: str):
    from serving.metrics import RedisBatchStats
    from serving.models import configure_tensorflow, load_classifier
    from serving.worker import ModelWorker, WorkerConfig

    configure_tensorflow(settings.tf_threads)
    classifier = load_classifier(settings.model, settings.weights, settings.labels, settings.preprocess)
    if classifier.note:
        log.warning("%s", classifier.note)
    started = time.perf_counter()
    classifier.warm_up((1, settings.batch_size))  # before the first heartbeat: ready means warm
    log.info("%s warmed up in %.0f ms", classifier.name, (time.perf_counter() - started) * 1000)
    config = WorkerConfig(batch_size=settings.batch_size, batch_wait_ms=settings.batch_wait_ms,
                          result_ttl=settings.result_ttl, top_k=settings.top_k,
                          heartbeat_ttl=settings.heartbeat_ttl)
    client = connect(redis_url, read_timeout=10)
    queue = RedisQueue(client, settings.queue_name)
    # Batch stats go to Redis, so /metrics on any web server reports every worker's.
    return ModelWorker(queue, classifier, config, observer=RedisBatchStats(queue))


def _on_stop_signals(stop) -> None:
    """SIGTERM or Ctrl-C: stop gracefully with ``stop``; a second one exits at once."""
    def handler(signum, frame):
        if handler.stopping:
            log.warning("received signal %d again: exiting now", signum)
            raise SystemExit(1)
        handler.stopping = True
        log.info("received signal %d: finishing the work in hand, then exiting", signum)
        stop()

    handler.stopping = False
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    embedded = None
    if settings.role == "all":
        redis_url, embedded = resolve_redis(settings.redis_url)
        settings = settings.replace(redis_url=redis_url)
    redis_url = settings.redis_url or DEFAULT_URL
    try:
        worker = create_worker(settings, redis_url) if settings.role in ("all", "worker") else None
        if settings.role == "worker":
            _on_stop_signals(worker.stop)  # the batch in hand is answered first
            worker.run()
            return 0
        http = HttpServer(create_app(settings), settings)
        # Stop listening, answer the requests in flight (the worker thread keeps running), exit.
        _on_stop_signals(http.request_stop)
        worker_thread = None
        if worker:
            worker_thread = threading.Thread(target=worker.run, name="model-worker", daemon=True)
            worker_thread.start()
        http.run()
        if worker:
            worker.stop()
            worker_thread.join(timeout=settings.client_timeout)
        return 0
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        from serving.models import ModelUnavailable

        if isinstance(exc, ModelUnavailable):
            log.error("%s", exc)
            return 1
        raise
    finally:
        if embedded:
            embedded.stop()


if __name__ == "__main__":
    sys.exit(main())
