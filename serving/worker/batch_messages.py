"""A taken batch's messages, read: the images to run, the answers already decided (bad or
mismatched messages), the images dropped for their deadline; and what a batch came to."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from serving.queue import Batch
from serving.queue.messages import BULK, INTERACTIVE, Answer, ImageRef, MessageError, Request

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
    expired_requests: tuple[tuple[str, int], ...] = ()  # (request, index) of the interactive ones


@dataclass
class Parsed:
    """A batch's messages sorted out: images to run, and answers already decided."""

    requests: list[Request]
    answers: list[Answer]
    expired: int = 0
    expired_jobs: list[str] = field(default_factory=list)  # jobs with images dropped for their deadline
    # The interactive ones dropped so, (request, index): their messages go with the answers.
    expired_requests: list[tuple[str, int]] = field(default_factory=list)
    read: int = 0  # messages found behind the batch's references


def parse_batch(
    messages: list[tuple[ImageRef, bytes]], now: float, input_shape: tuple[int, int, int]
) -> Parsed:
    """Read every message; a bad one gets its own error answer, addressed by the reference it
    was taken by; an expired one is dropped unrun: its client has been told 504 already."""
    parsed = Parsed([], [], read=len(messages))
    for ref, raw in messages:
        try:
            request = Request.from_bytes(raw)
            if request.reply != ref.reply:
                raise MessageError(f"it names {request.reply[1]}:{request.reply[2]}, not its reference")
        except MessageError as exc:
            log.error("a queued message for %s:%d is invalid (%s): %.60r", ref.reply_to, ref.index, exc, raw)
            parsed.answers.append(Answer.failed(ref.reply, 500, f"The queued message is invalid ({exc})."))
            continue
        if request.deadline < now:
            parsed.expired += 1
            if request.lane == BULK:
                parsed.expired_jobs.append(request.reply_to)
            else:
                parsed.expired_requests.append((request.reply_to, request.index))
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
    """A 500 answer for every image of the batch whose reference can be read."""
    answers = []
    for lane, raws in ((INTERACTIVE, batch.interactive), (BULK, batch.bulk)):
        for raw in raws:
            if reply := _reply_of(raw, lane):
                answers.append(Answer.failed(reply, 500, text))
    return answers


def _reply_of(entry: bytes, lane: str) -> tuple[str, str, int] | None:
    """Where the answer for a lane entry goes: its reference's, or a whole message's (queued by
    a web server from before references); None when neither can be read."""
    try:
        return ImageRef.from_bytes(entry, lane).reply
    except MessageError:
        pass
    try:
        return Request.from_bytes(entry).reply
    except MessageError as exc:
        return exc.reply
