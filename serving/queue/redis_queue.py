"""Every operation on the Redis queue between web servers and model workers, as one class
made of its parts: a request's calls (request_calls.py), jobs (job_calls.py), batches
(batch_calls.py) and the workers' presence (worker_presence.py), all on the clients, keys and
scripts of queue_base.py. Key names come from serving/queue/keys.py; every change that touches
more than one key is one Lua script (serving/queue/scripts.py)."""

from __future__ import annotations

from serving.queue.batch_calls import EMPTY, Batch, BatchCalls
from serving.queue.job_calls import JobCalls, JobSpec
from serving.queue.queue_base import REPLICA_WAIT_MS, Client, NotReplicated, TenantQueueFull
from serving.queue.request_calls import RequestCalls
from serving.queue.worker_presence import WorkerPresence

__all__ = [
    "EMPTY",
    "REPLICA_WAIT_MS",
    "Batch",
    "Client",
    "JobSpec",
    "NotReplicated",
    "RedisQueue",
    "TenantQueueFull",
]


class RedisQueue(RequestCalls, JobCalls, BatchCalls, WorkerPresence):
    """The queue: what web servers and workers do in Redis, over the clients of ``QueueBase``."""

    def sibling(self, name: str) -> RedisQueue:
        """Another queue on the same clients (a web server talks to every model version's queue)."""
        return RedisQueue(self.redis, name, self.blocking, min_replicas=self.min_replicas, watch=self.watch)
