"""Jobs on the bulk lane: record one and queue its images, read its state, wait for it to end,
follow its events, cancel it."""

from __future__ import annotations

# mypy: disable-error-code="no-untyped-call"
# (redis-py leaves its Sentinel, Cluster and raw-command entry points untyped.)
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from serving.queue import scripts
from serving.queue.keys import DEFAULT_TENANT
from serving.queue.messages import BULK, INTERACTIVE
from serving.queue.queue_base import NotReplicated, QueueBase, TenantQueueFull

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSpec:
    """What a new job records about itself."""

    id: str
    created: float  # epoch seconds
    deadline: float  # its images not computed by then are dropped unrun; the job is expired
    top_k: int
    as_list: bool  # answer with a list of results, as /predict does for a list
    result_ttl: int  # seconds its result is kept once it ends
    tenant: str = DEFAULT_TENANT  # who may read or cancel it


class JobCalls(QueueBase):
    """A job's life in Redis, as the web tier sees it."""

    def create_job(
        self, job: JobSpec, messages: Sequence[bytes], max_length: int, tenant_cap: int = 0
    ) -> bool:
        """Record a job and queue its images in its tenant's bulk lane unless the bulk lane holds
        ``max_length`` or more (False: full) or the tenant would have more than ``tenant_cap``
        images queued (TenantQueueFull). The job's keys live until its deadline plus its result
        TTL."""
        if not messages:
            raise ValueError("a job carries at least one image")
        keys = [
            self.keys.lane(BULK),
            self.keys.job(job.id),
            self.keys.doorbell,
            self.keys.job_images(job.id),
            self.keys.tenant_lane(job.tenant, BULK),
            self.keys.tenant_lane(job.tenant, INTERACTIVE),
            self.keys.active(BULK),
        ]
        keep_ms = int((job.deadline - job.created + job.result_ttl) * 1000)
        fields = [len(messages), job.created, job.deadline, job.top_k, int(job.as_list)]
        args = [max_length, keep_ms, *fields, job.id, job.tenant, tenant_cap]
        images = [part for index, message in enumerate(messages) for part in (index, message)]
        # The messages by a plain HSET and the references by the script, in one transaction; WAIT
        # counts replicas for the connection that wrote, so it follows the transaction on it.
        (_, _, reply), replicas = self._replicated(
            [
                ("HSET", self.keys.job_images(job.id), *images),
                ("PEXPIRE", self.keys.job_images(job.id), keep_ms),  # never without a TTL
                ("EVAL", scripts.CREATE_JOB, len(keys), *keys, *args),
            ],
            transaction=True,
        )
        queued = int(cast(int, reply))
        if queued == 1 and replicas < self.min_replicas:
            self.cancel_job(job.id, job.tenant)  # not acknowledged: taken back, so a 503 means "not accepted"
            raise NotReplicated(f"job {job.id} reached {replicas} of {self.min_replicas} replicas in time")
        if queued < 0:
            raise TenantQueueFull(tenant_cap)
        return queued == 1

    def job_state(self, job_id: str) -> tuple[dict[str, str], dict[int, bytes]] | None:
        """A job's fields and its answers so far by image index; None when there is no such job."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hgetall(self.keys.job(job_id))
        pipe.hgetall(self.keys.job_results(job_id))
        fields, results = pipe.execute()
        if not fields:
            return None
        return (
            {key.decode(): value.decode() for key, value in fields.items()},
            {int(index): answer for index, answer in results.items()},
        )

    def wait_job(self, job_id: str, timeout: float) -> bool:
        """Block until the job ends (or is deleted) or ``timeout`` passes. True when it ended.
        The token is rotated, not taken, so every waiter wakes."""
        key = self.keys.job_done(job_id)
        return self.blocking.blmove(key, key, cast(int, timeout), "LEFT", "RIGHT") is not None

    def job_events(
        self, job_id: str, after: str, timeout: float, count: int = 100
    ) -> list[tuple[str, dict[str, bytes]]]:
        """The job's events after stream id ``after`` ("0": from the start), waiting up to
        ``timeout`` seconds for one; [] when none came."""
        stream = self.keys.job_events(job_id)
        found = self.blocking.xread({stream: after}, count=count, block=max(1, int(timeout * 1000)))
        if not found:
            return []
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], cast(Any, found)[0][1])  # RESP2 shape
        return [(entry.decode(), {k.decode(): v for k, v in fields.items()}) for entry, fields in entries]

    def cancel_job(self, job_id: str, tenant: str = DEFAULT_TENANT) -> dict[str, str]:
        """Delete ``tenant``'s job, taking its queued images out of the bulk lane if it has not
        ended; its fields, or {} when there was none (or it is another tenant's)."""
        keys = [*self.keys.job_keys(job_id), self.keys.stats, self.keys.lane(BULK)]
        keys += [self.keys.job_events(job_id), self.keys.tenant_lane(tenant, BULK), self.keys.active(BULK)]
        flat, removed = self._cancel_job(keys=keys, args=[job_id, tenant])
        if removed:
            log.info("job %s cancelled: %d queued images taken out of the bulk lane", job_id, removed)
        return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}
