"""A worker's side of a batch: wait for work, take a batch atomically (fairly across tenants,
interactive before bulk), read the job images it took, and write its answers."""

from __future__ import annotations

# mypy: disable-error-code="no-untyped-call"
# (redis-py leaves its Sentinel, Cluster and raw-command entry points untyped.)
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from serving.queue import scripts
from serving.queue.messages import BULK, INTERACTIVE, Answer, ImageRef, MessageError, Request
from serving.queue.queue_base import NotReplicated, QueueBase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batch:
    """What a worker took: references to interactive images, then to job images."""

    interactive: list[bytes]
    bulk: list[bytes]

    def __len__(self) -> int:
        return len(self.interactive) + len(self.bulk)


EMPTY = Batch([], [])


class BatchCalls(QueueBase):
    """Taking and answering batches."""

    def take(
        self, worker_id: str, room: int, holding: Batch = EMPTY, bulk_caps: Sequence[int] | None = None
    ) -> Batch:
        """Take up to ``room`` more messages for a batch ``holding`` these already, into this worker's
        processing lists: interactive first, then bulk up to ``bulk_caps[interactive count]``
        (None: no cap)."""
        if room <= 0:
            return EMPTY
        caps: Sequence[int] = (
            bulk_caps if bulk_caps is not None else [len(holding) + room] * (len(holding) + room + 1)
        )
        # The script fills the batch from the least-served tenants of each lane, whose lanes it
        # must be given as keys: named as the last take found them, and when that falls short it
        # says which they are and is asked again (the last time without the check).
        named = self._tenants_expected
        for check in ("1", "1", "0"):
            result = self._take_from(worker_id, room, holding, caps, named, check)
            if len(result) == 2:
                interactive, bulk = result
                return Batch(holding.interactive + interactive, holding.bulk + bulk)
            named = self._tenants_expected = (
                [raw.decode() for raw in result[2]],
                [raw.decode() for raw in result[3]],
            )
        raise AssertionError("a take without the check always takes")

    def _take_from(
        self,
        worker_id: str,
        room: int,
        holding: Batch,
        caps: Sequence[int],
        named: tuple[list[str], list[str]],
        check: str,
    ) -> list[list[bytes]]:
        keys = [
            self.keys.lane(INTERACTIVE),
            self.keys.lane(BULK),
            self.keys.processing(worker_id),
            self.keys.processing(worker_id, BULK),
            self.keys.doorbell,
            self.keys.workers,
            self.keys.active(INTERACTIVE),
            self.keys.active(BULK),
            self.keys.owners(worker_id),
            self.keys.owners(worker_id, BULK),
            *(self.keys.tenant_lane(tenant, INTERACTIVE) for tenant in named[0]),
            *(self.keys.tenant_lane(tenant, BULK) for tenant in named[1]),
        ]
        args: list[int | str] = [room, len(holding.interactive), len(holding.bulk), worker_id]
        args += [len(named[0]), len(named[1]), *named[0], *named[1], *caps, check]
        result: list[list[bytes]] = self._take(keys=keys, args=args)
        return result

    def wait_for_work(self, timeout: float) -> bool:
        """Block until the doorbell rings or ``timeout`` passes. True when it rang."""
        return self.blocking.blpop([self.keys.doorbell], timeout=timeout) is not None

    def read_messages(self, batch: Batch) -> list[tuple[ImageRef, bytes]]:
        """The messages behind the references a worker took, each with its reference,
        interactive first, in one round trip; the jobs of the job images among them are marked
        running. An image with no message any more is left out, never computed: a withdrawn or
        expired request's, a cancelled or ended job's, one answered already (computed twice
        after a requeue). So is a reference that cannot be read."""
        interactive, whole = _interactive_entries(batch.interactive)
        bulk = _refs(batch.bulk, BULK)
        image_keys = [self.keys.image(ref.reply_to, ref.index) for ref in interactive]
        if not bulk:  # the usual batch: one MGET
            found = cast(list[bytes | None], self.redis.mget(image_keys)) if image_keys else []
            return whole + _with_messages(interactive, found)
        # Job images: marked running and read in one transaction, so a cancel cannot come between.
        jobs: dict[str, list[ImageRef]] = {}
        for ref in bulk:
            jobs.setdefault(ref.reply_to, []).append(ref)
        keys = [
            key for ref in bulk for key in (self.keys.job(ref.reply_to), self.keys.job_images(ref.reply_to))
        ]
        commands: list[tuple[object, ...]] = [("MGET", *image_keys)] if image_keys else []
        commands.append(("EVAL", scripts.OPEN_JOB_IMAGES, len(keys), *keys, *(ref.index for ref in bulk)))
        commands += [
            ("HMGET", self.keys.job_images(job), *(ref.index for ref in refs)) for job, refs in jobs.items()
        ]
        replies, _ = self._replicated(commands, transaction=True, wait=False)
        found = cast(list[bytes | None], replies.pop(0)) if image_keys else []
        is_open = dict(zip(bulk, cast(list[int], replies.pop(0)), strict=True))
        job_messages = {
            ref: message
            for refs, messages in zip(jobs.values(), replies, strict=True)
            for ref, message in zip(refs, cast(list[bytes | None], messages), strict=True)
        }
        bulk_found = [job_messages[ref] if int(is_open[ref]) else None for ref in bulk]
        return whole + _with_messages(interactive + bulk, found + bulk_found)

    def answer(
        self,
        worker_id: str,
        answers: Sequence[Answer],
        result_ttl: int,
        job_ttl: int = 3600,
        expired_jobs: Sequence[str] = (),
        expired_requests: Sequence[tuple[str, int]] = (),
    ) -> int:
        """Write the answers (interactive ones only while awaited, job ones once each), mark the
        ``expired_jobs`` (their images were dropped for their deadline), drop the messages of
        the ``expired_requests`` images (request, index) dropped so, and clear this worker's
        processing lists, in one transaction. Returns how many answers were written."""
        waiting_keys: list[str] = []
        waiting_args: list[int | bytes] = [result_ttl]
        job_keys: list[str] = [self.keys.stats]
        job_args: list[float | bytes] = [job_ttl * 1000, time.time()]
        for answer in answers:
            if answer.lane == BULK:
                job_keys += [*self.keys.job_keys(answer.reply_to), self.keys.job_events(answer.reply_to)]
                job_args += [answer.index, answer.status, answer.to_bytes()]
            else:
                waiting_keys += [
                    self.keys.waiting(answer.reply_to),
                    self.keys.result(answer.reply_to),
                    self.keys.image(answer.reply_to, answer.index),
                ]
                waiting_args += [answer.index, answer.to_bytes()]
        commands: list[tuple[object, ...]] = []
        if waiting_keys:
            commands.append(
                ("EVAL", scripts.ANSWER_REQUESTS, len(waiting_keys), *waiting_keys, *waiting_args)
            )
        if len(job_keys) > 1:
            commands.append(("EVAL", scripts.ANSWER_JOBS, len(job_keys), *job_keys, *job_args))
        scripts_run = len(commands)
        if expired_jobs:
            expire_keys = [self.keys.stats]
            for job_id in sorted(set(expired_jobs)):
                expire_keys += [
                    self.keys.job(job_id),
                    self.keys.job_done(job_id),
                    self.keys.job_images(job_id),
                    self.keys.job_events(job_id),
                ]
            commands.append(("EVAL", scripts.EXPIRE_JOBS, len(expire_keys), *expire_keys, time.time()))
        for request_id, index in expired_requests:
            commands.append(("DEL", self.keys.image(request_id, index)))
        commands.append(("DEL", *self.keys.held(worker_id)))
        # Job answers wait for a replica; when none acknowledges, they stay written on the primary
        # and NotReplicated says so (every step is idempotent, so running it again is safe). An
        # interactive answer lost with its primary costs its client a 504, which the promise allows.
        jobs_answered = len(job_keys) > 1
        results, replicas = self._replicated(commands, transaction=True, wait=jobs_answered)
        if replicas < self.min_replicas and jobs_answered:
            raise NotReplicated(f"answers reached {replicas} of {self.min_replicas} replicas in time")
        return sum(int(cast(int, written)) for written in results[:scripts_run])


def _refs(raws: Sequence[bytes], lane: str) -> list[ImageRef]:
    refs = []
    for raw in raws:
        try:
            refs.append(ImageRef.from_bytes(raw, lane))
        except MessageError as exc:
            log.error("dropping a %s lane entry that is not an image reference (%s): %.60r", lane, exc, raw)
    return refs


def _interactive_entries(raws: Sequence[bytes]) -> tuple[list[ImageRef], list[tuple[ImageRef, bytes]]]:
    """The references among interactive lane entries, and the whole messages that web servers
    of a version before references queued: in a rolling upgrade (workers first, then web
    servers) their requests are still answered."""
    refs: list[ImageRef] = []
    whole: list[tuple[ImageRef, bytes]] = []
    for raw in raws:
        try:
            refs.append(ImageRef.from_bytes(raw))
            continue
        except MessageError:
            pass
        try:
            request = Request.from_bytes(raw)
            reply: tuple[str, str, int] | None = request.reply
        except MessageError as exc:
            reply = exc.reply  # a broken one is answered with its error, if it names its sender
        if reply is not None and reply[0] == INTERACTIVE:
            whole.append((ImageRef(reply[1], reply[2]), raw))
        else:
            log.error(
                "dropping an interactive lane entry that is neither a reference nor a request: %.60r", raw
            )
    return refs, whole


def _with_messages(refs: Sequence[ImageRef], found: Sequence[bytes | None]) -> list[tuple[ImageRef, bytes]]:
    """Each reference with its message, those with none left out."""
    messages = [(ref, message) for ref, message in zip(refs, found, strict=True) if message is not None]
    if len(messages) < len(refs):
        log.debug("%d taken images had no message any more", len(refs) - len(messages))
    return messages
