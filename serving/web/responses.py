"""JSON responses and errors, in one place: every error is a status and a plain sentence, answered
as ``{"success": false, "error": "..."}``, or as the protocol's ``{"error": "..."}`` under /v2."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import redis
from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from serving.images import DecodeBusy, ImageError
from serving.queue.redis_queue import NotReplicated

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1


class ApiError(Exception):
    """An error answered as-is: a status and a plain sentence for the client."""

    status = 500
    headers: dict[str, str] = {}  # e.g. WWW-Authenticate, Retry-After

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


class TooManyRequests(ApiError):
    """429: the tenant is over one of its limits; Retry-After says when to try again."""

    status = 429

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class BadRequest(ApiError):
    status = 400


class ServiceUnavailable(ApiError):
    """Answered as 503 with Retry-After: Redis down, queue full, or no model worker."""

    status = 503


def json_response(
    body: dict[str, Any] | list[Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(body), status=status, headers=headers, mimetype="application/json")


V2_PREFIX = "/v2"


def _speaks_v2() -> bool:
    """Whether the request is one of the Open Inference Protocol's, matched route or not."""
    return request.path == V2_PREFIX or request.path.startswith(V2_PREFIX + "/")


def error_response(status: int, message: str) -> Response:
    """The error in the shape its route speaks; a 503 says when to try again."""
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
    body = {"error": message} if _speaks_v2() else {"success": False, "error": message}
    return json_response(body, status, headers)


REDIS_DOWN = "The queue (Redis) is unreachable. Try again shortly."
NOT_REPLICATED = "The job was not accepted: no Redis replica confirmed it in time. Try again shortly."


def describe_error(exc: Exception) -> tuple[int, str]:
    """The status and sentence the API answers for an exception raised while serving a request."""
    if isinstance(exc, ImageError):
        return 400, str(exc)
    if isinstance(exc, DecodeBusy):
        return 503, str(exc)
    if isinstance(exc, ApiError):
        return exc.status, str(exc)
    if isinstance(exc, NotReplicated):  # a job no replica acknowledged in time: not accepted
        log.warning("%s", exc)
        return 503, NOT_REPLICATED
    if isinstance(exc, redis.RedisError):
        log.warning("Redis error: %s", exc)
        return 503, REDIS_DOWN
    if isinstance(exc, RequestEntityTooLarge):
        return 413, _too_large()
    if isinstance(exc, HTTPException):
        return exc.code or 500, exc.description or exc.name
    if isinstance(exc, TimeoutError):  # the socket timed out while the body was read (gunicorn)
        return 408, "The request did not arrive in time."
    log.exception("unhandled error", exc_info=exc)
    return 500, "Internal server error."


def _too_large() -> str:
    """Which of werkzeug's limits a 413 hit: the body's size, or the form's shape."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is None or request.content_length > limit:
        return f"The upload is larger than the limit of {limit} bytes."
    return (
        f"The form has more than {current_app.config['MAX_FORM_PARTS']} parts, or a form field larger than "
        f"{current_app.config['MAX_FORM_MEMORY_SIZE']} bytes."
    )


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(Exception)
    def any_error(exc: Exception) -> Response:
        response = error_response(*describe_error(exc))
        if isinstance(exc, ApiError):
            response.headers.update(exc.headers)
        allowed = getattr(exc, "valid_methods", None)
        if allowed:  # a 405 says which methods the path takes
            response.headers["Allow"] = ", ".join(allowed)
        return response
