"""Every Redis key name of one queue: the one place that builds them.

Keys, all under the queue name ``Q`` in braces (``QueueKeys`` builds them; nothing else does).
The braces are Redis Cluster's hash tag: only ``Q`` is hashed, so every key of one queue lives
in one hash slot, on one shard, and every script and transaction of the queue runs unchanged on
a cluster. A key built anywhere else could land in another slot; so none is.

- ``{Q}``                           interactive lane's count: one token ("1") per queued image, so
                                   its length is the lane's depth (what KEDA, the bound and /metrics
                                   read); the messages themselves wait in their tenants' lanes
- ``{Q}:bulk``                      the bulk lane's count, the same way
- ``{Q}:tenant:<t>``                tenant t's queued interactive images, oldest first, as references
                                   (messages.ImageRef, ``<request>:<index>``): the messages (pixels)
                                   wait under their own keys, so they never cross a script
- ``{Q}:tenant:<t>:bulk``           tenant t's queued job images, references the same way (``<job>:<index>``),
                                   taken only to top up a batch
- ``{Q}:active``, ``{Q}:active-bulk``  sorted sets of the tenants with images queued in that lane;
                                   score: images served so far (a tenant joins at the lowest
                                   score), so a take fills a batch from them in turn (scripts.TAKE)
- ``{Q}:doorbell``                  a token workers block on; rung when work is queued (scripts.py)
- ``{Q}:waiting:<request>``         hash of the request's image indexes still awaited; the worker that
                                   deletes an index is the one that answers it (exactly one answer)
- ``{Q}:result:<request>``          list of the request's answers, popped by the waiting handler
- ``{Q}:image:<request>:<index>``   an interactive image's message until it is answered, with the
                                   waiting hash's TTL: SET by the web server just before the script
                                   that queues its reference, read with one MGET for a whole batch
                                   by the worker that took it
- ``{Q}:processing:<worker>``       references to the interactive images a worker has taken and not
                                   yet answered
- ``{Q}:processing-bulk:<worker>``  the same for job images
- ``{Q}:owners:<worker>``, ``{Q}:owners-bulk:<worker>``  the tenant of each message in those lists,
                                   in the same order: a dead worker's images go back to their own
                                   tenants' lanes
- ``{Q}:worker:<worker>``           heartbeat with a TTL (messages.Heartbeat)
- ``{Q}:workers``                   sorted set of the workers that beat (score: heartbeat expiry, ms):
                                   the index that finds heartbeats and processing lists, no SCAN;
                                   a dead worker leaves it when its lists are requeued
- ``{Q}:model``                     the model the workers serve, kept with no TTL: web servers prepare
                                   and queue images for it while no worker is alive (scaled to zero)
- ``{Q}:stats``                     hash of deployment-wide counts: batches, jobs (serving/metrics.py)
- ``{Q}:job:<job>``                 hash of a job's state (status, images, answered, deadline, ...)
- ``{Q}:job:<job>:results``         hash of its answers by image index, written once each
- ``{Q}:job:<job>:images``          hash of its image messages not yet answered, by image index
- ``{Q}:job:<job>:done``            list that receives a token when it ends: long-polls block on it

"""

from __future__ import annotations

from serving.queue.messages import BULK, INTERACTIVE

# Every request's tenant while --auth is off; registered names start with a letter or digit.
DEFAULT_TENANT = "_"


class QueueKeys:
    """Every Redis key name of one queue."""

    def __init__(self, name: str):
        if "{" in name or "}" in name:
            raise ValueError(f"a queue name cannot hold braces (QueueKeys adds the hash tag): {name!r}")
        self.name = name
        self.tag = "{" + name + "}"  # the interactive lane's key, and every other key's prefix
        self.lanes = {INTERACTIVE: self.tag, BULK: f"{self.tag}:bulk"}
        self.doorbell = f"{self.tag}:doorbell"
        self.stats = f"{self.tag}:stats"
        self.model = f"{self.tag}:model"
        self.workers = f"{self.tag}:workers"
        self.actives = {INTERACTIVE: f"{self.tag}:active", BULK: f"{self.tag}:active-bulk"}

    def lane(self, lane: str) -> str:
        return self.lanes[lane]

    def active(self, lane: str) -> str:
        return self.actives[lane]

    def tenant_lane(self, tenant: str, lane: str = INTERACTIVE) -> str:
        return f"{self.tag}:tenant:{tenant}" + ("" if lane == INTERACTIVE else ":bulk")

    def waiting(self, request_id: str) -> str:
        return f"{self.tag}:waiting:{request_id}"

    def result(self, request_id: str) -> str:
        return f"{self.tag}:result:{request_id}"

    def image(self, request_id: str, index: int) -> str:
        return f"{self.tag}:image:{request_id}:{index}"

    def processing(self, worker_id: str, lane: str = INTERACTIVE) -> str:
        kind = "processing" if lane == INTERACTIVE else "processing-bulk"
        return f"{self.tag}:{kind}:{worker_id}"

    def owners(self, worker_id: str, lane: str = INTERACTIVE) -> str:
        kind = "owners" if lane == INTERACTIVE else "owners-bulk"
        return f"{self.tag}:{kind}:{worker_id}"

    def held(self, worker_id: str) -> list[str]:
        """A worker's processing lists and the owners lists beside them."""
        return [
            self.processing(worker_id),
            self.processing(worker_id, BULK),
            self.owners(worker_id),
            self.owners(worker_id, BULK),
        ]

    def heartbeat(self, worker_id: str) -> str:
        return f"{self.tag}:worker:{worker_id}"

    def job(self, job_id: str) -> str:
        return f"{self.tag}:job:{job_id}"

    def job_results(self, job_id: str) -> str:
        return f"{self.tag}:job:{job_id}:results"

    def job_done(self, job_id: str) -> str:
        return f"{self.tag}:job:{job_id}:done"

    def job_images(self, job_id: str) -> str:
        return f"{self.tag}:job:{job_id}:images"

    def all_fixed(self) -> list[str]:
        """The keys that do not depend on a request, job or worker."""
        return [
            *self.lanes.values(),
            *self.actives.values(),
            self.doorbell,
            self.stats,
            self.model,
            self.workers,
        ]

    def job_events(self, job_id: str) -> str:
        """A job's event stream: an entry per answered image, then one with its end."""
        return f"{self.tag}:job:{job_id}:events"

    def job_keys(self, job_id: str) -> list[str]:
        return [self.job(job_id), self.job_results(job_id), self.job_done(job_id), self.job_images(job_id)]
