"""A batch's traces: its own span in a new trace, linked to every traced request it serves, and
in each traced request's trace the image's time in a worker's hands, linked back to the batch."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager

from serving import tracing
from serving.queue import Batch
from serving.queue.messages import BULK, Answer, ModelInfo, Request


def batch_span(
    batch: Batch, requests: Sequence[Request], batch_id: str, taken_ns: int, model: ModelInfo, worker_id: str
) -> AbstractContextManager[tracing.Span]:
    """The batch's span: a new trace linked to every traced request it serves (recorded when
    any of them is), with its assembly (first take to messages read) as a child."""
    if not tracing.enabled():
        return tracing.span("batch")
    links = []
    for (lane, reply_to), (traceparent, images) in _traced_requests(requests).items():
        about: dict[str, tracing.AttributeValue] = {
            "inference.lane": lane,
            "inference.reply_to": reply_to,
            "inference.images": images,
        }
        link = tracing.link(traceparent, about)
        if link is not None:
            links.append(link)
    attributes: dict[str, tracing.AttributeValue] = {
        "inference.batch.id": batch_id,
        "inference.batch.messages": len(batch),
        "inference.batch.interactive": len(batch.interactive),
        "inference.batch.bulk": len(batch.bulk),
        "inference.model.name": model.name,
        "inference.model.runtime": model.runtime or "none",
        "inference.worker.id": worker_id,
    }
    if requests:
        oldest = min(request.queued_at for request in requests)
        attributes["inference.queue.longest_wait_ms"] = round((taken_ns / 1e9 - oldest) * 1000, 2)
    span = tracing.span("batch", attributes, kind=tracing.SpanKind.CONSUMER, links=links, start_time=taken_ns)
    return _with_assembly(span, taken_ns)


def image_spans(
    requests: Sequence[Request],
    answers: Sequence[Answer],
    batch: tracing.Span,
    batch_id: str,
    taken_ns: int,
) -> None:
    """In each traced request's own trace, its image's time in this worker's hands: an
    interactive image's wait in the queue until taken; a job image's whole life, from queued
    to answered (a job's client is gone by then). Each links to the batch span."""
    written_ns = time.time_ns()
    statuses = {(a.lane, a.reply_to, a.index): a.status for a in answers}
    batch_context = batch.get_span_context()
    for request in requests:
        parent = tracing.context_from_traceparent(request.trace) if request.trace else None
        if parent is None:
            continue
        bulk = request.lane == BULK
        span = tracing.start_span(
            "job image" if bulk else "queue wait",
            {
                "inference.lane": request.lane,
                "inference.reply_to": request.reply_to,
                "inference.image.index": request.index,
                "inference.batch.id": batch_id,
                "http.response.status_code": statuses.get(request.reply, 0),
            },
            kind=tracing.SpanKind.CONSUMER,
            context=parent,
            links=[tracing.Link(batch_context)],
            start_time=int(request.queued_at * 1e9),
        )
        span.end(end_time=written_ns if bulk else taken_ns)


def _traced_requests(requests: Sequence[Request]) -> dict[tuple[str, str], tuple[str, int]]:
    """(lane, reply_to) -> (traceparent, images in the batch), for the traced requests: one
    link per request, however many of its images the batch holds."""
    traced: dict[tuple[str, str], tuple[str, int]] = {}
    for request in requests:
        if request.trace:
            key = (request.lane, request.reply_to)
            traced[key] = (request.trace, traced[key][1] + 1 if key in traced else 1)
    return traced


@contextmanager
def _with_assembly(batch_span: AbstractContextManager[tracing.Span], taken_ns: int) -> Iterator[tracing.Span]:
    """The batch span, current, with an "assemble batch" child from the first take until now
    (the batching window, job images fetched, messages read)."""
    with batch_span as span:
        tracing.start_span("assemble batch", start_time=taken_ns).end()
        yield span
