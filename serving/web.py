"""The web tier: accept an image, queue it for the model worker, wait for its answer."""

from __future__ import annotations

import logging
import threading
import time

import orjson
import redis
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from helpers import ImageError, encode_array, prepare_image
from settings import Settings

from .metrics import register_metrics
from .queue import RedisQueue, new_request_id

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1


class ServiceUnavailable(Exception):
    """Answered as 503 with Retry-After: Redis down, queue full, or no model worker."""


def json_response(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status=status, headers=headers, mimetype="application/json")


def error_response(status: int, message: str) -> Response:
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
    return json_response({"success": False, "error": message}, status, headers)


class WorkerDirectory:
    """What the live model workers serve, read from their heartbeats and cached briefly."""

    def __init__(self, queue: RedisQueue, refresh_seconds: float = 1.0):
        self.queue = queue
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._workers: dict[str, dict] = {}
        self._read_at = float("-inf")

    def workers(self) -> dict[str, dict]:
        with self._lock:
            if time.monotonic() - self._read_at > self.refresh_seconds:
                self._workers = self.queue.live_workers()
                self._read_at = time.monotonic()
            return self._workers

    def model(self) -> dict:
        workers = self.workers()
        if not workers:
            raise ServiceUnavailable("No model worker is running; try again shortly.")
        return next(iter(workers.values()))["model"]


def _request_image() -> bytes:
    upload = request.files.get("image")
    if upload is None:
        raise ImageError("Send the image as a multipart/form-data file field named 'image'.")
    return upload.read()


def classify(queue: RedisQueue, directory: WorkerDirectory, settings: Settings,
             data: bytes) -> tuple[dict, int]:
    """Queue one prepared image and wait for the worker's answer, within the deadline.

    Returns the JSON body and HTTP status of the answer.
    """
    model = directory.model()
    pixels = prepare_image(data, tuple(model["input_size"]), settings.max_image_pixels)
    request_id = new_request_id()
    g.request_id = request_id
    now = time.time()
    message = orjson.dumps({
        "id": request_id,
        "queued_at": now,
        "deadline": now + settings.client_timeout,
        "image": encode_array(pixels),
    })
    if not queue.enqueue(message, request_id, settings.max_queue_length, settings.client_timeout):
        raise ServiceUnavailable("The server is busy: the queue is full. Try again shortly.")
    raw = queue.wait_result(request_id, settings.client_timeout)
    if raw is None:
        _, raw = queue.withdraw(message, request_id)
        if raw is None:
            message = f"No result within {settings.client_timeout:g} s; the request was withdrawn."
            return {"success": False, "error": message, "request_id": request_id}, 504
    result = orjson.loads(raw)
    result["request_id"] = request_id
    status = 200 if result.get("success") else int(result.pop("status", 500))
    g.batch_id = result.get("batch", {}).get("id")
    return result, status


def register_routes(app: Flask, queue: RedisQueue, settings: Settings) -> None:
    directory = WorkerDirectory(queue)
    app.extensions["worker_directory"] = directory

    @app.post("/predict")
    def predict():
        body, status = classify(queue, directory, settings, _request_image())
        if status == 200:
            body["timings_ms"]["total"] = round((time.perf_counter() - g.started) * 1000, 2)
        return json_response(body, status)

    @app.get("/healthz")
    def healthz():
        return json_response({"alive": True})

    @app.get("/readyz")
    def readyz():
        try:
            queue.redis.ping()
            workers = queue.live_workers()
            depth = queue.depth()
        except redis.RedisError:
            return error_response(503, "Redis is unreachable.")
        if not workers:
            return error_response(503, "No model worker has sent a heartbeat recently.")
        return json_response({"ready": True, "workers": len(workers), "queue_depth": depth})


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ImageError)
    def bad_image(exc: ImageError):
        return error_response(400, str(exc))

    @app.errorhandler(ServiceUnavailable)
    def unavailable(exc: ServiceUnavailable):
        return error_response(503, str(exc))

    @app.errorhandler(redis.RedisError)
    def redis_down(exc: redis.RedisError):
        log.warning("Redis error: %s", exc)
        return error_response(503, "The queue (Redis) is unreachable. Try again shortly.")

    @app.errorhandler(413)
    def too_large(exc):
        limit = app.config["MAX_CONTENT_LENGTH"]
        return error_response(413, f"The upload is larger than the limit of {limit} bytes.")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        response = error_response(exc.code or 500, exc.description or exc.name)
        if getattr(exc, "valid_methods", None):  # a 405 must say which methods the path takes
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "Internal server error.")


QUIET_PATHS = ("/healthz", "/readyz", "/metrics", "/static/")  # probes and scrapes: not logged


def logfmt_value(value) -> str:
    """A key=value log value that keeps the line one parseable line whatever a client sent."""
    text = "-" if value is None else str(value)
    if text and text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    return orjson.dumps(text).decode()


def register_request_log(app: Flask) -> None:
    @app.before_request
    def start_clock():
        g.started = time.perf_counter()

    @app.after_request
    def log_request(response: Response):
        client_id = request.headers.get("X-Request-ID")
        request_id = getattr(g, "request_id", None)
        if client_id or request_id:
            response.headers["X-Request-ID"] = client_id or request_id
        if not request.path.startswith(QUIET_PATHS):
            fields = {"method": request.method, "path": request.path, "status": response.status_code,
                      "ms": f"{(time.perf_counter() - g.get('started', time.perf_counter())) * 1000:.1f}",
                      "id": request_id, "client_id": client_id, "batch": g.get("batch_id")}
            log.info("request %s", " ".join(f"{key}={logfmt_value(value)}" for key, value in fields.items()))
        return response


def build_app(settings: Settings, queue: RedisQueue) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.extensions["queue"] = queue
    app.extensions["settings"] = settings
    register_routes(app, queue, settings)
    register_error_handlers(app)
    register_request_log(app)
    register_metrics(app, queue, settings.max_queue_length)
    from .ui import blueprint as ui_pages  # ui imports this module

    app.register_blueprint(ui_pages)
    return app
