"""The request clock, its steps, its span, the one log line per request, and X-Request-ID.

Views add what they learned (the request id, the model, the batches that served it) with
``note``, and time their steps with ``step``: each step is a child span of the request's span
(when tracing is on) and its milliseconds go into the log line's timings. The request's span
starts before the view (continuing an incoming W3C ``traceparent``) and ends after the
response is made; probes and scrapes get neither a span nor a line.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Any

import orjson
from flask import Flask, Response, g, has_request_context, request

from serving import tracing
from serving.tracing import Span, SpanKind

log = logging.getLogger(__name__)

QUIET_PATHS = ("/healthz", "/readyz", "/metrics", "/static/", "/v2/health/")  # probes and scrapes


def started_at() -> float:
    """When this request was received (perf_counter): the one clock every timing uses."""
    started: float | None = g.get("started_at")
    return started or time.perf_counter()


def elapsed_ms() -> float:
    return round((time.perf_counter() - started_at()) * 1000, 2)


def note(**fields: Any) -> None:
    """Add fields to this request's log line (request_id=..., batch=..., model=...)."""
    g.setdefault("log_fields", {}).update(fields)


def note_timing(name: str, ms: float) -> None:
    """Add ``ms`` to the timing ``name`` of this request's log line."""
    if has_request_context():
        timings: dict[str, float] = g.setdefault("timings_ms", {})
        timings[name] = round(timings.get(name, 0.0) + ms, 2)


class step:
    """``with step("decode and resize", "decode", {...}) as span:`` times a step of the
    request: a child span of the request's (a no-op span while tracing is off) and its
    milliseconds under ``timing`` in the log line."""

    __slots__ = ("name", "timing", "attributes", "_started", "_span")

    def __init__(self, name: str, timing: str, attributes: dict[str, Any] | None = None) -> None:
        self.name, self.timing, self.attributes = name, timing, attributes

    def __enter__(self) -> Span:
        self._started = time.perf_counter()
        self._span = tracing.span(self.name, self.attributes)
        return self._span.__enter__()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        note_timing(self.timing, (time.perf_counter() - self._started) * 1000)
        return self._span.__exit__(kind, error, tb)


def logfmt_value(value: Any) -> str:
    """A key=value log value that keeps the line one parseable line whatever a client sent."""
    text = "-" if value is None else str(value)
    if text and text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    return orjson.dumps(text).decode()


class _Logfmt:
    """The text line's key=value pairs, written only if a text formatter asks for them."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: dict[str, Any]):
        self.pairs = pairs

    def __str__(self) -> str:
        return " ".join(f"{key}={logfmt_value(value)}" for key, value in self.pairs.items())


def _route() -> str:
    return request.url_rule.rule if request.url_rule else "unmatched"


def _start_span() -> None:
    route = _route()
    span = tracing.start_span(
        f"{request.method} {route}" if request.url_rule else request.method,
        {"http.request.method": request.method, "http.route": route, "url.path": request.path},
        kind=SpanKind.SERVER,
        context=tracing.extract(request.headers.get("traceparent"), request.headers.get("tracestate")),
    )
    g.span, g.span_token = span, tracing.activate(span)


def _finish_span(response: Response, fields: dict[str, Any], client_id: str | None) -> None:
    span: Span = g.span
    span.set_attribute("http.response.status_code", response.status_code)
    for key, value in (
        ("inference.request.id", fields.get("request_id")),
        ("inference.client_request_id", client_id),
        ("inference.model.name", fields.get("model")),
        ("inference.images", fields.get("images")),
    ):
        if value is not None:
            span.set_attribute(key, value)
    if fields.get("batches"):
        span.set_attribute("inference.batch.ids", fields["batches"])
    if response.status_code >= 500:
        span.set_status(tracing.StatusCode.ERROR, f"HTTP {response.status_code}")
    traceresponse = tracing.traceparent(span)
    if traceresponse:  # W3C Trace Context level 2: the client learns which trace its request made
        response.headers["traceresponse"] = traceresponse


def register_request_log(app: Flask) -> None:
    @app.before_request
    def start_clock() -> None:
        g.started_at = time.perf_counter()
        if tracing.enabled() and not request.path.startswith(QUIET_PATHS):
            _start_span()

    @app.after_request
    def log_request(response: Response) -> Response:
        fields = g.get("log_fields", {})
        client_id = request.headers.get("X-Request-ID")
        request_id = fields.get("request_id")
        if client_id or request_id:
            response.headers["X-Request-ID"] = client_id or request_id
        if "span" in g:
            _finish_span(response, fields, client_id)
        if not request.path.startswith(QUIET_PATHS):
            _log_line(response, fields, client_id)
        return response

    @app.teardown_request
    def end_span(error: BaseException | None) -> None:
        span: Span | None = g.pop("span", None)
        if span is None:
            return
        if error is not None:
            span.record_exception(error)
            span.set_status(tracing.StatusCode.ERROR, type(error).__name__)
        span.end()
        tracing.deactivate(g.pop("span_token"))


def _log_line(response: Response, fields: dict[str, Any], client_id: str | None) -> None:
    ms = elapsed_ms()
    batches = fields.get("batches") or []
    ids = tracing.trace_ids(g.get("span"))
    trace_id = ids[0] if ids else None
    text = {
        "method": request.method,
        "path": request.path,
        "status": response.status_code,
        "ms": f"{ms:.1f}",
        "id": fields.get("request_id"),
        "client_id": client_id,
        "batch": ",".join(batches) or None,
    }
    if trace_id:
        text["trace"] = trace_id
    structured = {
        "message": "request",
        "request_id": fields.get("request_id"),
        "client_id": client_id,
        "trace_id": trace_id,
        "method": request.method,
        "path": request.path,
        "route": _route(),
        "status": response.status_code,
        "model": fields.get("model"),
        "images": fields.get("images"),
        "batch_ids": batches,
        "ms": ms,
        "timings_ms": g.get("timings_ms", {}),
    }
    log.info("request %s", _Logfmt(text), extra={"fields": structured})
