"""Which workers are alive and what they serve: heartbeats, the workers' index, and returning a
dead (or stopping) worker's messages to the heads of their lanes."""

from __future__ import annotations

# mypy: disable-error-code="no-untyped-call"
# (redis-py leaves its Sentinel, Cluster and raw-command entry points untyped.)
import logging
import time
from typing import cast

import orjson
import redis

from serving.queue.keys import DEFAULT_TENANT
from serving.queue.messages import BULK, INTERACTIVE, Heartbeat, MessageError, ModelInfo
from serving.queue.queue_base import QueueBase

log = logging.getLogger(__name__)


class WorkerPresence(QueueBase):
    """Heartbeats and the requeueing of dead workers' messages."""

    def beat(self, worker_id: str, heartbeat: Heartbeat, ttl: float) -> None:
        """Say this worker is alive (for ``ttl``) and what it serves; the model outlives it."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.heartbeat(worker_id), heartbeat.to_bytes(), px=int(ttl * 1000))
        pipe.zadd(self.keys.workers, {worker_id: int((time.time() + ttl) * 1000)})
        pipe.set(self.keys.model, orjson.dumps(heartbeat.model.as_dict()))
        pipe.execute()

    def last_model(self) -> ModelInfo | None:
        """The model the workers last served, though none may be alive now."""
        raw = self.redis.get(self.keys.model)
        if raw is None:
            return None
        try:
            return ModelInfo.from_dict(orjson.loads(cast(bytes, raw)))
        except (orjson.JSONDecodeError, MessageError) as exc:
            log.warning("ignoring the last model record: %s", exc)
            return None

    def sign_off(self, worker_id: str) -> None:
        """This worker stops: its heartbeat goes, and it leaves the index (with anything it still
        held, returned to the lanes)."""
        self.redis.delete(self.keys.heartbeat(worker_id))
        self._requeue_worker(worker_id)

    def _indexed_workers(self) -> list[str]:
        """Every worker in the index: alive, or dead with its processing lists not yet requeued."""
        return [
            raw.decode(errors="replace")
            for raw in cast(list[bytes], self.redis.zrange(self.keys.workers, 0, -1))
        ]

    def live_workers(self) -> dict[str, Heartbeat]:
        """Worker id -> heartbeat, for every worker whose heartbeat has not expired. A heartbeat
        that cannot be read (a worker of another version) is logged and left out. Found from the
        index, never by a keyspace scan (which a cluster would have to run on every shard)."""
        ids = self._indexed_workers()
        if not ids:
            return {}
        workers = {}
        raws = cast(
            list[bytes | None], self.redis.mget([self.keys.heartbeat(worker_id) for worker_id in ids])
        )
        for worker_id, raw in zip(ids, raws):
            if raw is None:
                continue  # dead: requeue_dead takes it out of the index
            try:
                workers[worker_id] = Heartbeat.from_bytes(raw)
            except MessageError as exc:
                log.warning("ignoring the heartbeat of worker %r: %s", worker_id, exc)
        return workers

    def requeue_dead(self) -> int:
        """Return the messages of every worker whose heartbeat expired, and take it out of the
        index. Returns how many."""
        return sum(self._requeue_worker(worker_id) for worker_id in self._indexed_workers())

    def _requeue_worker(self, worker_id: str) -> int:
        for _ in range(3):  # -1: an owner was missing from what we read; read again
            # The script returns 0 at once for a live worker, whose lists may still change.
            pipe = self.redis.pipeline(transaction=False)
            pipe.lrange(self.keys.owners(worker_id), 0, -1)
            pipe.lrange(self.keys.owners(worker_id, BULK), 0, -1)
            owners = pipe.execute()
            tenants = sorted({DEFAULT_TENANT, *(raw.decode() for listed in owners for raw in listed)})
            keys = [
                self.keys.processing(worker_id),
                self.keys.processing(worker_id, BULK),
                self.keys.heartbeat(worker_id),
                self.keys.lane(INTERACTIVE),
                self.keys.lane(BULK),
                self.keys.doorbell,
                self.keys.workers,
                self.keys.owners(worker_id),
                self.keys.owners(worker_id, BULK),
                self.keys.active(INTERACTIVE),
                self.keys.active(BULK),
            ]
            for tenant in tenants:
                keys += [self.keys.tenant_lane(tenant, INTERACTIVE), self.keys.tenant_lane(tenant, BULK)]
            moved = int(self._requeue(keys=keys, args=[worker_id, *tenants]))
            if moved >= 0:
                return moved
        raise redis.ResponseError(f"the owners of worker {worker_id}'s messages kept changing")
