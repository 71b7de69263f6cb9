"""The one path from a front door to the queue. Every door (/predict, /jobs, /v2, the upload
page) turns what it received into ``Uploads``; ``prepare_uploads`` applies every request-level
limit (at least one image, at most --max-images-per-request, top_k within the model's classes)
and decodes each image to the model's input; ``classify`` queues one message per image and
waits for every answer within the deadline. Only the shape of the HTTP answer differs by door.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flask import has_request_context, request
from PIL import Image

from serving import tracing
from serving.images import (
    DecodeBusy,
    ImageError,
    MemoryBudget,
    decode_image,
    decoded_side,
    fit_image,
    header_pixels,
)
from serving.queue import RedisQueue
from serving.queue.messages import INTERACTIVE, Answer, ModelInfo, image_messages
from serving.queue.redis_queue import TenantQueueFull
from serving.settings import Settings
from serving.tenants.limits import Refusal
from serving.tenants.registry import Tenant
from serving.web import request_log
from serving.web.auth import OPEN_TENANT, charge, check_model, refuse
from serving.web.disconnect import ClientGone, abort_on_disconnect
from serving.web.model_directory import Route
from serving.web.responses import ServiceUnavailable
from serving.web.services import Services, services
from serving.web.uploads import Uploads, checked_top_k

# A request whose images declare at most this many pixels in all is decoded on its own thread
# (the event loop's, under gevent): about a millisecond of work, less than a decode thread's hand-off.
INLINE_DECODE_PIXELS = 100_000
INLINE_DECODE_BYTES = 32 * 1024  # most 0.1 MP JPEGs; a hostile header walk in it: ~20 ms
QUEUE_FULL = "The server is busy: the queue is full. Try again shortly."


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Prepared:
    """A request's images as the model's input, and how to answer it."""

    images: list[np.ndarray]
    top_k: int
    as_list: bool  # answer with a list of results, even for one image
    route: Route  # the model version that computes them, and its queue
    tenant: Tenant  # whose they are: its lane, its cap on queued images


@dataclass(frozen=True)
class Classification:
    """The outcome of one request: its status and JSON body, as /predict answers them."""

    request_id: str
    status: int
    body: dict[str, Any]
    answers: tuple[Answer, ...] = ()  # per image, in upload order, when every image was answered

    @property
    def batch_ids(self) -> list[str]:
        return sorted({answer.batch.id for answer in self.answers if answer.batch})


def check_image_count(count: int, limit: int) -> None:
    """Every door's request-level limit on images: at least one, at most ``limit``."""
    if count == 0:
        raise ImageError("The request carries no image.")
    if count > limit:
        raise ImageError(f"The request carries {count} images; the limit is {limit}.")


def decodes_inline(uploads: Sequence[bytes]) -> bool:
    """Whether the uploads are small enough to decode on the request's own thread: handing a
    thumbnail to a decode thread costs more than decoding it (0.1 MP decodes in about a
    millisecond), and the event loop waits at most that long. Both the bytes (checked first: even
    reading a header walks a JPEG's markers or a PNG's chunks, and a hostile file packs
    thousands) and the pixels the headers declare (a small file can hold a huge image) are
    bounded in total, so a big upload never blocks the loop; one decode at a time on the loop
    needs no share of the memory budget."""
    if sum(map(len, uploads)) > INLINE_DECODE_BYTES:
        return False
    total = 0
    for data in uploads:
        pixels = header_pixels(data)
        if pixels is None:
            return False  # the decode thread says what is wrong with it
        total += pixels
        if total > INLINE_DECODE_PIXELS:
            return False
    return True


def prepare_images(
    uploads: Sequence[bytes],
    model: ModelInfo,
    max_pixels: int,
    budget: MemoryBudget | None = None,
    on_decoded: Callable[[Image.Image], None] | None = None,
) -> list[np.ndarray]:
    """Every upload as the model's input; one that cannot be read fails them all, by its number.
    ``on_decoded`` sees each decoded image before it is fitted (the page's thumbnail)."""
    prepared = []
    for number, data in enumerate(uploads, start=1):
        try:
            image = decode_image(data, max_pixels, decoded_side(model.input_size, model.resize), budget)
            if on_decoded:
                on_decoded(image)
            prepared.append(fit_image(image, model.input_size, model.resize))
        except ImageError as exc:
            if len(uploads) == 1:
                raise
            raise ImageError(f"Image {number} of {len(uploads)}: {exc}") from None
    return prepared


def prepare_uploads(
    serving: Services, uploads: Uploads, on_decoded: Callable[[Image.Image], None] | None = None
) -> Prepared:
    """The uploads checked against every request-level limit and decoded; any bad image fails
    them all, before anything is queued."""
    settings = serving.settings
    check_image_count(len(uploads.images), settings.max_images_per_request)
    route = serving.models.route(uploads.model, uploads.version)
    model = route.model
    check_model(model.name)
    top_k = checked_top_k(uploads.top_k, settings.top_k, model.classes)
    tenant = charge(serving.limits, len(uploads.images))  # before the decode: a refusal costs little
    attributes = {
        "inference.images": len(uploads.images),
        "inference.model.name": model.name,
        "inference.model.version": model.version,
    }
    with request_log.step("decode and resize", "decode", attributes):
        if decodes_inline(uploads.images):
            images = prepare_images(uploads.images, model, settings.max_image_pixels, None, on_decoded)
            return Prepared(images, top_k, uploads.as_list or len(images) > 1, route, tenant)
        try:
            images = serving.cpu_threads.run(  # off the event loop: a big image stalls nobody
                prepare_images,
                uploads.images,
                model,
                settings.max_image_pixels,
                serving.decode_budget,
                on_decoded,
                timeout=settings.client_timeout,
            )
        except TimeoutError:
            raise DecodeBusy("The server could not decode the images in time. Try again shortly.") from None
    return Prepared(images, top_k, uploads.as_list or len(images) > 1, route, tenant)


def run_classification(prepared: Prepared) -> Classification:
    """Within a request: queue prepared images and wait; the request log learns the request id
    and batches."""
    serving = services()
    result = classify(
        prepared.route.queue,
        serving.settings,
        prepared.images,
        prepared.top_k,
        prepared.as_list,
        prepared.tenant,
    )
    request_log.note(request_id=result.request_id, batches=result.batch_ids, images=len(prepared.images))
    if result.answers:
        model = next((a.model for a in result.answers if a.model), None)
        request_log.note(model=model.name if model else None, version=model.version if model else None)
        # The worker's side of the wait, for the log line: the longest queue wait, the model call.
        request_log.note_timing("queued", max(answer.queued_ms for answer in result.answers))
        request_log.note_timing("model", max(answer.model_ms for answer in result.answers))
    return result


def classify(
    queue: RedisQueue,
    settings: Settings,
    images: Sequence[np.ndarray],
    top_k: int,
    as_list: bool = False,
    tenant: Tenant = OPEN_TENANT,
) -> Classification:
    """Queue the images as one request of ``tenant`` and wait for all their answers, within the
    deadline; ``as_list`` answers with a list of results even for one image."""
    request_id = new_request_id()
    now = time.time()
    # The request's span context rides in each message: the batch that serves it links to it.
    trace = tracing.traceparent()
    messages = image_messages(request_id, images, top_k, now, now + settings.client_timeout, trace=trace)
    with request_log.step(
        "enqueue", "enqueue", {"inference.lane": INTERACTIVE, "inference.images": len(messages)}
    ):
        try:
            queued = queue.enqueue(
                request_id,
                messages,
                settings.max_queue_length,
                settings.request_lifetime,
                tenant.name,
                tenant.limits.max_queued,
            )
        except TenantQueueFull as exc:
            raise refuse(tenant, tenant_queue_full(exc.cap)) from None
        if not queued:
            raise ServiceUnavailable(QUEUE_FULL)
    with request_log.step("wait for answers", "wait") as span:
        try:
            with abort_on_disconnect(request.environ if has_request_context() else None):
                answers = queue.wait_answers(request_id, len(messages), settings.client_timeout)
        except ClientGone:  # its images are taken back: no batch is spent on a client that left
            queue.withdraw(request_id, range(len(messages)), tenant.name)
            request_log.note(client="gone")
            span.set_attribute("inference.withdrawn", len(messages))
            error = "The client closed the connection; the request was withdrawn."
            return Classification(
                request_id, 499, {"success": False, "error": error, "request_id": request_id}
            )
        if len(answers) < len(messages):
            answered = {answer.index for answer in answers}
            unanswered = [i for i in range(len(messages)) if i not in answered]
            _, late = queue.withdraw(request_id, unanswered, tenant.name)
            answers += late
            span.set_attribute("inference.withdrawn", len(messages) - len(answers))
        if span.is_recording():
            record_batches(span, answers)
    if len(answers) < len(messages):
        error = f"No result within {settings.client_timeout:g} s; the request was withdrawn."
        return Classification(request_id, 504, {"success": False, "error": error, "request_id": request_id})
    ordered = tuple(sorted(answers, key=lambda answer: answer.index))
    status, body = compose(ordered, as_list or len(ordered) > 1)
    body["request_id"] = request_id
    return Classification(request_id, status, body, ordered)


def tenant_queue_full(cap: int) -> Refusal:
    return Refusal("queued", f"This key may have {cap} images queued at once; wait for answers.", 1)


def record_batches(span: tracing.Span, answers: Sequence[Answer]) -> None:
    """What the wait span says about the batches that served the request: their ids, a link to
    each batch's span, and per image when it was queued and run."""
    batches = {answer.batch.id: answer.batch_trace for answer in answers if answer.batch}
    span.set_attribute("inference.batch.ids", sorted(batches))
    for batch_id, batch_trace in sorted(batches.items()):
        link = tracing.link(batch_trace, {"inference.batch.id": batch_id}) if batch_trace else None
        if link is not None:
            span.add_link(link.context, link.attributes)
    for answer in sorted(answers, key=lambda answer: answer.index):
        span.add_event(
            "answer",
            {
                "inference.image.index": answer.index,
                "http.response.status_code": answer.status,
                "inference.batch.id": answer.batch.id if answer.batch else "",
                "inference.queued_ms": answer.queued_ms,
                "inference.model_ms": answer.model_ms,
            },
        )


def compose(answers: Sequence[Answer], as_list: bool) -> tuple[int, dict[str, Any]]:
    """The status and body for a request's answers (in image order): a single result, or a list
    of them; the first failed image fails the request."""
    failed = next((answer for answer in answers if not answer.ok), None)
    if failed:
        error = failed.error or "The request failed."
        if len(answers) > 1:
            error = f"Image {failed.index + 1} of {len(answers)}: {error}"
        return failed.status, {"success": False, "error": error}
    if as_list:
        return 200, {"success": True, "results": [answer.body for answer in answers]}
    return 200, {"success": True, **answers[0].body}
