"""OpenTelemetry traces for the web tier and the model workers, set up once per process.

Off by default (``--tracing off``), and then free: ``span`` hands back one shared no-op context
manager after a single flag check, nothing of the SDK is imported, and no trace context is
written into queue messages. ``--tracing on`` installs the SDK's tracer provider with:

- a parent-based sampler: a span whose parent (an incoming ``traceparent``, or the request a
  queued image belongs to) was sampled is recorded; a new trace is recorded with probability
  ``--trace-sample-ratio``; a batch span is recorded when any request it serves was;
- the exporters named by ``OTEL_TRACES_EXPORTER`` (``otlp``, the default, ``console``, ``none``,
  comma-separated), each behind a batch span processor (``OTEL_BSP_*``); the OTLP exporter is
  OTLP/HTTP protobuf and reads the standard ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``, ``_HEADERS``,
  ``_TIMEOUT``, ``_COMPRESSION`` and certificate variables itself;
- the resource from ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` (service name
  ``keras-redis-server`` unless told otherwise).

``OTEL_SDK_DISABLED=true`` keeps tracing off whatever ``--tracing`` says. Across the Redis hop
the context travels as a W3C ``traceparent`` string inside the queue message
(serving/queue/messages.py), written only for sampled requests.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from contextvars import Token
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, StatusCode, Tracer, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes, AttributeValue

from serving.settings import Settings, SettingsError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import Sampler

__all__ = [
    "AttributeValue",
    "Link",
    "Span",
    "activate",
    "deactivate",
    "SpanKind",
    "StatusCode",
    "TracingError",
    "configure",
    "context_from_traceparent",
    "enabled",
    "extract",
    "install",
    "link",
    "shutdown",
    "span",
    "start_span",
    "trace_ids",
    "traceparent",
]

log = logging.getLogger(__name__)

SERVICE_NAME = "keras-redis-server"
SCOPE = "serving"  # the instrumentation scope every span of the service is made under
EXPORTERS = ("otlp", "console", "none")

_PROPAGATOR = TraceContextTextMapPropagator()  # W3C trace context, the one format on the wire
_NOOP: AbstractContextManager[Span] = nullcontext(trace.INVALID_SPAN)

# The hot path reads these two names and nothing else while tracing is off.
_enabled = False
_tracer: Tracer = trace.NoOpTracer()
_provider: TracerProvider | None = None
_lock = threading.Lock()


class TracingError(SettingsError):
    """The tracing environment asks for something this install cannot do."""


def enabled() -> bool:
    return _enabled


def configure(settings: Settings, environ: Mapping[str, str] | None = None) -> bool:
    """Set tracing up for this process from ``settings`` and the ``OTEL_*`` environment, once:
    later calls (the web tier and the worker thread of one process) keep what the first one set.
    Returns whether tracing is on."""
    global _enabled, _tracer, _provider
    environ = os.environ if environ is None else environ
    with _lock:
        if _provider is not None or settings.tracing != "on":
            return _enabled
        if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            log.info("tracing is off: OTEL_SDK_DISABLED=true")
            return False
        provider = _build_provider(settings.trace_sample_ratio, environ)
        _provider, _tracer, _enabled = provider, provider.get_tracer(SCOPE), True
    return True


def install(provider: TracerProvider) -> None:
    """Trace with ``provider`` from now on (tests: one with an in-memory exporter)."""
    global _enabled, _tracer, _provider
    with _lock:
        _provider, _tracer, _enabled = provider, provider.get_tracer(SCOPE), True


def shutdown() -> None:
    """Export what is pending and turn tracing off."""
    global _enabled, _tracer, _provider
    with _lock:
        provider, _provider, _tracer, _enabled = _provider, None, trace.NoOpTracer(), False
    if provider is not None:
        provider.shutdown()


def _build_provider(ratio: float, environ: Mapping[str, str]) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    names = [name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    unknown = sorted(set(names) - set(EXPORTERS) - {""})
    if unknown:
        raise TracingError(
            f"OTEL_TRACES_EXPORTER={environ['OTEL_TRACES_EXPORTER']!r}: this server exports to "
            f"{', '.join(EXPORTERS)}, not {', '.join(unknown)}"
        )
    exporters: list[SpanExporter] = []
    if "otlp" in names:
        protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
        )
        if protocol != "http/protobuf":
            raise TracingError(
                f"OTLP protocol {protocol!r}: this server exports OTLP over HTTP (http/protobuf); "
                "point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's HTTP port (4318)"
            )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporters.append(OTLPSpanExporter())
    if "console" in names:
        exporters.append(ConsoleSpanExporter())
    resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME})
    provider = TracerProvider(sampler=sampler(ratio), resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info(
        "tracing on: %s of new traces sampled, exporting to %s (service %s)",
        f"{ratio:.0%}",
        ", ".join(type(e).__name__ for e in exporters) or "nowhere",
        resource.attributes.get("service.name"),
    )
    return provider


def sampler(ratio: float) -> Sampler:
    """Parent-based: follow a parent's decision; a root span is recorded when any span it links
    to was (a batch serving a sampled request), else with probability ``ratio``."""
    from opentelemetry.sdk.trace import sampling

    class LinkedOrRatio(sampling.Sampler):
        def __init__(self, ratio: float):
            self.ratio = sampling.TraceIdRatioBased(ratio)

        def should_sample(
            self,
            parent_context: Context | None,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Attributes = None,
            links: Sequence[Link] | None = None,
            trace_state: TraceState | None = None,
        ) -> sampling.SamplingResult:
            if any(link.context.trace_flags.sampled for link in links or ()):
                return sampling.SamplingResult(sampling.Decision.RECORD_AND_SAMPLE, attributes)
            return self.ratio.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )

        def get_description(self) -> str:
            return f"LinkedOrRatio{{{self.ratio.rate}}}"

    return sampling.ParentBased(root=LinkedOrRatio(ratio))


# Spans ----------------------------------------------------------------------------------
def span(
    name: str,
    attributes: Attributes = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    links: Sequence[Link] | None = None,
    context: Context | None = None,
    start_time: int | None = None,
) -> AbstractContextManager[Span]:
    """A span around a block, current inside it (a no-op while tracing is off). Exceptions
    raised in the block are recorded on it and set its status to error."""
    if not _enabled:
        return _NOOP
    return _tracer.start_as_current_span(
        name, context=context, kind=kind, attributes=attributes, links=links, start_time=start_time
    )


def start_span(
    name: str,
    attributes: Attributes = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    links: Sequence[Link] | None = None,
    context: Context | None = None,
    start_time: int | None = None,
) -> Span:
    """A span its caller ends (``span.end(end_time=...)``), not made current."""
    if not _enabled:
        return trace.INVALID_SPAN
    return _tracer.start_span(
        name, context=context, kind=kind, attributes=attributes, links=links, start_time=start_time
    )


def activate(span: Span) -> Token[Context]:
    """Make ``span`` current (the parent of spans made on this thread) until ``deactivate``."""
    return otel_context.attach(trace.set_span_in_context(span))


def deactivate(token: Token[Context]) -> None:
    otel_context.detach(token)


# Trace context -------------------------------------------------------------------------
def traceparent(of: Span | None = None) -> str | None:
    """The W3C traceparent of ``of`` (the current span by default), or None when tracing is off
    or the span is not sampled: only sampled requests carry their context through the queue."""
    if not _enabled:
        return None
    context = (of or trace.get_current_span()).get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def extract(traceparent: str | None, tracestate: str | None = None) -> Context | None:
    """The context an incoming request continues (its ``traceparent`` and ``tracestate``
    headers), or None to start a new trace."""
    if not _enabled or not traceparent:
        return None
    carrier = {"traceparent": traceparent, **({"tracestate": tracestate} if tracestate else {})}
    return _PROPAGATOR.extract(carrier)


def context_from_traceparent(value: str) -> Context | None:
    """The context a traceparent names (a span of another process), or None if it names none."""
    context = _PROPAGATOR.extract({"traceparent": value})
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def link(value: str, attributes: Attributes = None) -> Link | None:
    """A link to the span a traceparent names, or None if it names none."""
    context = context_from_traceparent(value)
    if context is None:
        return None
    return Link(trace.get_current_span(context).get_span_context(), attributes)


def trace_ids(of: Span | None = None) -> tuple[str, str] | None:
    """(trace id, span id) in hex of ``of`` (the current span by default) while it is recorded:
    what a log line names to find its trace."""
    if not _enabled:
        return None
    context = (of or trace.get_current_span()).get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"
