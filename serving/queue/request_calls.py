"""A web server's side of an interactive request: queue its images in its tenant's lane, wait
for their answers, and take back what is still queued when it gives up."""

from __future__ import annotations

# mypy: disable-error-code="no-untyped-call"
# (redis-py leaves its Sentinel, Cluster and raw-command entry points untyped.)
import time
from collections.abc import Sequence
from typing import cast

from serving.queue.keys import DEFAULT_TENANT
from serving.queue.messages import BULK, INTERACTIVE, Answer
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
        marker outlives the wait by ``keep_seconds`` at most, and so expires if its web server
        dies."""
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
        args: list[int | str | bytes] = [max_length, int(keep_seconds * 1000), tenant, tenant_cap, *messages]
        queued = int(self._enqueue(keys=keys, args=args))
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
        self, request_id: str, unanswered: Sequence[bytes], tenant: str = DEFAULT_TENANT
    ) -> tuple[int, list[Answer]]:
        """Give up on a request: take back its unanswered messages still queued. Returns how many
        were taken back and the answers that landed meanwhile."""
        keys = [
            self.keys.lane(INTERACTIVE),
            self.keys.waiting(request_id),
            self.keys.result(request_id),
            self.keys.lane(BULK),
            self.keys.doorbell,
            self.keys.tenant_lane(tenant, INTERACTIVE),
            self.keys.active(INTERACTIVE),
        ]
        removed, late = self._withdraw(keys=keys, args=[tenant, *unanswered])
        return int(removed), [Answer.from_bytes(raw, request_id) for raw in late]
