"""Every Redis key name of one queue: the one place that builds them.

Keys, all under the queue name ``Q`` (``QueueKeys`` builds them; nothing else does):

- ``Q``                          interactive lane: request messages (serving/messages.py), oldest first
- ``Q:bulk``                     bulk lane: references to job images (messages.JobImage), taken
                                 only to top up a batch
- ``Q:doorbell``                 a token workers block on; rung when work is queued (scripts.py)
- ``Q:waiting:<request>``        hash of the request's image indexes still awaited; the worker that
                                 deletes an index is the one that answers it (exactly one answer)
- ``Q:result:<request>``         list of the request's answers, popped by the waiting handler
- ``Q:processing:<worker>``      interactive messages a worker has taken and not yet answered
- ``Q:processing-bulk:<worker>`` the same for job image references
- ``Q:worker:<worker>``          heartbeat with a TTL (messages.Heartbeat)
- ``Q:model``                    the model the workers serve, kept with no TTL: web servers prepare
                                 and queue images for it while no worker is alive (scaled to zero)
- ``Q:stats``                    hash of deployment-wide counts: batches, jobs (serving/metrics.py)
- ``Q:job:<job>``                hash of a job's state (status, images, answered, deadline, ...)
- ``Q:job:<job>:results``        hash of its answers by image index, written once each
- ``Q:job:<job>:images``         hash of its image messages not yet answered, by image index
- ``Q:job:<job>:done``           list that receives a token when it ends: long-polls block on it

"""

from __future__ import annotations

from serving.queue.messages import BULK, INTERACTIVE


class QueueKeys:
    """Every Redis key name of one queue."""

    def __init__(self, name: str):
        self.name = name
        self.lanes = {INTERACTIVE: name, BULK: f"{name}:bulk"}
        self.doorbell = f"{name}:doorbell"
        self.stats = f"{name}:stats"
        self.model = f"{name}:model"

    def lane(self, lane: str) -> str:
        return self.lanes[lane]

    def waiting(self, request_id: str) -> str:
        return f"{self.name}:waiting:{request_id}"

    def result(self, request_id: str) -> str:
        return f"{self.name}:result:{request_id}"

    def processing(self, worker_id: str, lane: str = INTERACTIVE) -> str:
        kind = "processing" if lane == INTERACTIVE else "processing-bulk"
        return f"{self.name}:{kind}:{worker_id}"

    def heartbeat(self, worker_id: str) -> str:
        return f"{self.name}:worker:{worker_id}"

    def job(self, job_id: str) -> str:
        return f"{self.name}:job:{job_id}"

    def job_results(self, job_id: str) -> str:
        return f"{self.name}:job:{job_id}:results"

    def job_done(self, job_id: str) -> str:
        return f"{self.name}:job:{job_id}:done"

    def job_images(self, job_id: str) -> str:
        return f"{self.name}:job:{job_id}:images"

    def job_events(self, job_id: str) -> str:
        """A job's event stream: an entry per answered image, then one with its end."""
        return f"{self.name}:job:{job_id}:events"

    def job_keys(self, job_id: str) -> list[str]:
        return [self.job(job_id), self.job_results(job_id), self.job_done(job_id), self.job_images(job_id)]
