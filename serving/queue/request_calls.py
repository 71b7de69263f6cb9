"""A web server's side of an interactive request: queue its images in its tenant's lane, wait
for their answers, and take back what is still queued when it gives up."""

from __future__ import annotations

# mypy: disable-error-code="no-untyped-call"
# (redis-py leaves its Sentinel, Cluster and raw-command entry points untyped.)
import time
from collections.abc import Iterable, Sequence
from typing import cast

from serving.queue.keys import DEFAULT_TENANT
from serving.queue.messages import BULK, INTERACTIVE, Answer, ImageRef, image_refs
from serving.queue.queue_base import QueueBase, TenantQueueFull


class RequestCalls(QueueBase):
    """Queueing an interactive request and waiting for its answers."""

    def enqueue(
        self,
        request_id: str,
        messages: Sequence[bytes],
        max_length: int,
        keep_seconds: float,
        tenant: str = DEFAULT_TENANT,
        tenant_cap: int = 0,
    ) -> bool:
        """Queue a request's image messages (in image order) in its tenant's lane unless the
        interactive lane holds ``max_length`` or more (False: full) or the tenant would have more
        than ``tenant_cap`` images queued (TenantQueueFull; 0: no cap). The request's waiting
        marker and its messages outlive the wait by ``keep_seconds`` at most, and so expire if
        its web server dies. One round trip: each message under its own key by a plain SET,
        then the references into the lane by the script, which deletes the messages again when
        it refuses."""
        if not messages:  # the upload path refuses requests without images before this
            raise ValueError("a request to queue carries at least one image")
        keys = [
            self.keys.lane(INTERACTIVE),
            self.keys.waiting(request_id),
            self.keys.doorbell,
            self.keys.tenant_lane(tenant, INTERACTIVE),
            self.keys.tenant_lane(tenant, BULK),
            self.keys.active(INTERACTIVE),
        ]
        images = [self.keys.image(request_id, index) for index in range(len(messages))]
        keep_ms = int(keep_seconds * 1000)
        args: list[str | int | float | bytes] = [max_length, keep_ms, tenant, tenant_cap]
        args += image_refs(request_id, len(messages))
        # SET before the script on one connection: no worker can take a reference before its
        # message is there. Each SET carries its TTL, so a web server that dies between the two
        # leaves nothing for long.
        writes = [("SET", key, message, "PX", keep_ms) for key, message in zip(images, messages, strict=True)]
        queued = int(cast(int, self._after_writes(writes, self._enqueue, [*keys, *images], args)))
        if queued < 0:
            raise TenantQueueFull(tenant_cap)
        return queued == 1

    def wait_answers(self, request_id: str, count: int, timeout: float) -> list[Answer]:
        """Block until ``count`` answers arrived or ``timeout`` passed; returns those that did."""
        key = self.keys.result(request_id)
        answers: list[Answer] = []
        give_up = time.monotonic() + timeout
        while len(answers) < count:
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                break
            popped = self.blocking.blpop([key], timeout=remaining)
            if popped is None:
                break
            raws: list[bytes] = [cast(bytes, popped[1])]
            if count - len(answers) > 1:  # the rest of a multi-image request often lands at once
                raws += cast(list[bytes], self.redis.lpop(key, count - len(answers) - 1) or [])
            answers += [Answer.from_bytes(raw, request_id) for raw in raws]
        return answers

    def withdraw(
        self, request_id: str, unanswered: Iterable[int], tenant: str = DEFAULT_TENANT
    ) -> tuple[int, list[Answer]]:
        """Give up on a request: take back its images still queued of those ``unanswered``
        (image indexes) and drop its messages. Returns how many were taken back and the answers
        that landed meanwhile."""
        keys = [
            self.keys.lane(INTERACTIVE),
            self.keys.waiting(request_id),
            self.keys.result(request_id),
            self.keys.lane(BULK),
            self.keys.doorbell,
            self.keys.tenant_lane(tenant, INTERACTIVE),
            self.keys.active(INTERACTIVE),
        ]
        indexes = list(unanswered)
        keys += [self.keys.image(request_id, index) for index in indexes]
        refs = [ImageRef(request_id, index).to_bytes() for index in indexes]
        removed, late = self._withdraw(keys=keys, args=[tenant, *refs])
        return int(removed), [Answer.from_bytes(raw, request_id) for raw in late]
