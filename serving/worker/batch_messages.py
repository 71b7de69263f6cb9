"""A taken batch's messages, read: the images to run, the answers already decided (bad or
mismatched messages), the images dropped for their deadline; and what a batch came to."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from serving.queue import Batch
from serving.queue.messages import BULK, Answer, JobImage, MessageError, Request

log = logging.getLogger(__name__)

BATCH_FAILED = "The server failed on this request's batch."
MODEL_FAILED = "The model failed on this request's batch."


@dataclass(frozen=True)
class BatchResult:
    """What one batch came to: an answer for every image that gets one, and what happened."""

    answers: list[Answer]
    computed: int = 0  # images the model ran
    model_seconds: float = 0.0
    expired: int = 0  # images dropped unrun for their deadline
    expired_jobs: tuple[str, ...] = ()  # the jobs those belonged to


@dataclass
class Parsed:
    """A batch's messages sorted out: images to run, and answers already decided."""

    requests: list[Request]
    answers: list[Answer]
    expired: int = 0
    expired_jobs: list[str] = field(default_factory=list)  # jobs with images dropped for their deadline


def parse_batch(messages: list[bytes], now: float, input_shape: tuple[int, int, int]) -> Parsed:
    """Read every message; a bad one gets its own error answer (or is dropped when it names no
    sender), an expired one is dropped unrun: its client has been told 504 already."""
    parsed = Parsed([], [])
    for raw in messages:
        try:
            request = Request.from_bytes(raw)
        except MessageError as exc:
            if exc.reply is None:
                log.error("dropping a message that is not a request (%s): %.60r", exc, raw)
            else:
                parsed.answers.append(
                    Answer.failed(exc.reply, 500, f"The queued message is invalid ({exc}).")
                )
            continue
        if request.deadline < now:
            parsed.expired += 1
            if request.lane == BULK:
                parsed.expired_jobs.append(request.reply_to)
        elif request.pixels.shape != input_shape:
            parsed.answers.append(
                Answer.failed(
                    request.reply,
                    500,
                    f"The queued image is {list(request.pixels.shape)}; this worker's model takes "
                    f"{list(input_shape)}.",
                )
            )
        else:
            parsed.requests.append(request)
    return parsed


def error_for_each(batch: Batch, text: str) -> list[Answer]:
    """A 500 answer for every image of the batch whose sender can be read."""
    answers = []
    readers: list[tuple[bytes, Callable[[bytes], Request | JobImage]]]
    readers = [(raw, Request.from_bytes) for raw in batch.interactive]
    readers += [(raw, JobImage.from_bytes) for raw in batch.bulk]
    for raw, read in readers:
        try:
            answers.append(Answer.failed(read(raw).reply, 500, text))
        except MessageError as exc:
            if exc.reply:
                answers.append(Answer.failed(exc.reply, 500, text))
    return answers
