"""The request clock, the one log line per request, and the X-Request-ID header.

Views add what they learned (the request id, the batches that served it) with ``note``; the
line is written after the response is made.
"""

from __future__ import annotations

import logging
import time

import orjson
from flask import Flask, Response, g, request

log = logging.getLogger(__name__)

QUIET_PATHS = ("/healthz", "/readyz", "/metrics", "/static/", "/v2/health/")  # probes and scrapes


def started_at() -> float:
    """When this request was received (perf_counter): the one clock every timing uses."""
    return g.get("started_at") or time.perf_counter()


def elapsed_ms() -> float:
    return round((time.perf_counter() - started_at()) * 1000, 2)


def note(**fields: object) -> None:
    """Add fields to this request's log line (request_id=..., batch=...)."""
    g.setdefault("log_fields", {}).update(fields)


def logfmt_value(value: object) -> str:
    """A key=value log value that keeps the line one parseable line whatever a client sent."""
    text = "-" if value is None else str(value)
    if text and text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    return orjson.dumps(text).decode()


def register_request_log(app: Flask) -> None:
    @app.before_request
    def start_clock() -> None:
        g.started_at = time.perf_counter()

    @app.after_request
    def log_request(response: Response) -> Response:
        fields = g.get("log_fields", {})
        client_id = request.headers.get("X-Request-ID")
        request_id = fields.get("request_id")
        if client_id or request_id:
            response.headers["X-Request-ID"] = client_id or request_id
        if not request.path.startswith(QUIET_PATHS):
            line = {
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "ms": f"{elapsed_ms():.1f}",
                "id": request_id,
                "client_id": client_id,
                "batch": fields.get("batch"),
            }
            log.info("request %s", " ".join(f"{key}={logfmt_value(value)}" for key, value in line.items()))
        return response
