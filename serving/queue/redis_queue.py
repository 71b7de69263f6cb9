"""Every operation on the Redis queue between web servers and model workers. Key names come
from serving/queue/keys.py; every change that touches more than one key is one Lua script
(serving/queue/scripts.py)."""

from __future__ import annotations

# mypy: disable-error-code="no-untyped-call"
# (redis-py leaves its Sentinel, Cluster and raw-command entry points untyped.)
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis
from redis.cluster import RedisCluster

from serving.queue import scripts
from serving.queue.keys import DEFAULT_TENANT, QueueKeys
from serving.queue.messages import BULK, INTERACTIVE, Answer, Heartbeat, JobImage, MessageError, ModelInfo
from serving.queue.primary import PrimaryWatch

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


@dataclass(frozen=True)
class Batch:
    """What a worker took: interactive messages, then job image references."""

    interactive: list[bytes]
    bulk: list[bytes]

    def __len__(self) -> int:
        return len(self.interactive) + len(self.bulk)


EMPTY = Batch([], [])


class TenantQueueFull(Exception):
    """The tenant already has as many images queued as it may (its cap, not the lane's bound)."""

    def __init__(self, cap: int):
        super().__init__(f"at most {cap} queued images")
        self.cap = cap


# A client of one Redis (plain or Sentinel-managed) or of a Redis Cluster.
Client = redis.Redis | RedisCluster


class NotReplicated(redis.RedisError):
    """The primary took a write, but too few replicas acknowledged it in time: it would be lost
    if the primary failed now. Not retried: no replica (one is resyncing, or the only one was
    promoted) answers sooner by being asked again."""


# How long a write that must be replicated waits for the replicas' acknowledgement.
REPLICA_WAIT_MS = 500


class RedisQueue:
    """The queue, over two clients: ``redis`` for short calls (it should have a short socket
    timeout, so a hung Redis fails fast) and ``blocking`` for the calls that block on purpose.

    ``min_replicas``: a job is acknowledged, and a batch's answers count as written, only once
    that many replicas have the write (WAIT on the connection that wrote, after the script or
    transaction); 0 for a Redis with no replicas. ``watch`` follows the primary the clients talk
    to, for the log, /readyz and /metrics."""

    def __init__(
        self,
        client: Client,
        name: str,
        blocking: Client | None = None,
        *,
        min_replicas: int = 0,
        watch: PrimaryWatch | None = None,
    ):
        self.redis = client
        self.blocking = blocking or client
        self.keys = QueueKeys(name)
        self.min_replicas = min_replicas
        self.watch = watch or PrimaryWatch.of_client(client)
        self._enqueue = client.register_script(scripts.ENQUEUE)
        self._take = client.register_script(scripts.TAKE)
        self._answer_requests = client.register_script(scripts.ANSWER_REQUESTS)
        self._withdraw = client.register_script(scripts.WITHDRAW)
        self._requeue = client.register_script(scripts.REQUEUE)
        self._create_job = client.register_script(scripts.CREATE_JOB)
        self._open_job_images = client.register_script(scripts.OPEN_JOB_IMAGES)
        self._answer_jobs = client.register_script(scripts.ANSWER_JOBS)
        self._expire_jobs = client.register_script(scripts.EXPIRE_JOBS)
        self._cancel_job = client.register_script(scripts.CANCEL_JOB)
        # The tenants (interactive, bulk) the last take filled from: the next one names them.
        self._tenants_expected: tuple[list[str], list[str]] = ([], [])

    @property
    def name(self) -> str:
        return self.keys.name

    def sibling(self, name: str) -> RedisQueue:
        """Another queue on the same clients (a web server talks to every model version's queue)."""
        return RedisQueue(self.redis, name, self.blocking, min_replicas=self.min_replicas, watch=self.watch)

    # Web side ------------------------------------------------------------------
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

    def depth(self, lane: str = INTERACTIVE) -> int:
        return int(self.redis.llen(self.keys.lane(lane)))

    # Jobs (the bulk lane) -----------------------------------------------------
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
        args: list[float | str | bytes] = [
            max_length,
            keep_ms,
            *fields,
            job.id,
            job.tenant,
            tenant_cap,
            *messages,
        ]
        if not self.min_replicas:
            queued = int(self._create_job(keys=keys, args=args))
        else:
            # WAIT counts replicas for the connection that wrote, so it follows the script on it.
            (reply,), replicas = self._replicated([("EVAL", scripts.CREATE_JOB, len(keys), *keys, *args)])
            queued = int(cast(int, reply))
            if queued == 1 and replicas < self.min_replicas:
                self.cancel_job(
                    job.id, job.tenant
                )  # not acknowledged: taken back, so a 503 means "not accepted"
                raise NotReplicated(
                    f"job {job.id} reached {replicas} of {self.min_replicas} replicas in time"
                )
        if queued < 0:
            raise TenantQueueFull(tenant_cap)
        return queued == 1

    def primary(self) -> str | None:
        """host:port of the primary this process talks to (None before it first found one)."""
        if isinstance(self.redis, RedisCluster):
            self._node()
        return self.watch.address

    def _node(self) -> redis.Redis:
        """A client of the primary that holds this queue's slot (the only one there is, but for
        a Redis Cluster): what a transaction followed by WAIT must run on."""
        if isinstance(self.redis, RedisCluster):
            node = self.redis.get_node_from_key(self.keys.tag)
            client = self.redis.get_redis_connection(node)
            self.watch.note(f"{node.host}:{node.port}")
            return client
        return self.redis

    def _replicated(
        self, commands: Sequence[tuple[object, ...]], transaction: bool = False, wait: bool = True
    ) -> tuple[list[object], int]:
        """Run ``commands`` (in MULTI/EXEC when ``transaction``) and then WAIT for
        ``min_replicas``, on one connection; returns their replies and how many replicas
        acknowledged. Commands are EVAL (never EVALSHA, which a fresh primary may not know, and
        never redis-py's Script, which a cluster pipeline refuses)."""
        node = self._node()
        pipe = node.pipeline(transaction=False)  # MULTI by hand: WAIT inside MULTI returns at once
        if transaction:
            pipe.execute_command("MULTI")
        for command in commands:
            pipe.execute_command(*command)
        if transaction:
            pipe.execute_command("EXEC")
        wait = wait and self.min_replicas > 0
        if wait:
            pipe.execute_command("WAIT", self.min_replicas, REPLICA_WAIT_MS)
        try:
            replies = pipe.execute()
        except redis.ConnectionError:
            if isinstance(self.redis, RedisCluster):  # the slot may have moved: ask the cluster again
                self.redis.nodes_manager.initialize()
            raise
        replicas = int(replies.pop()) if wait else self.min_replicas
        if transaction:
            replies = replies[-1]  # EXEC's list; the others are OK and QUEUED
            if replies is None:
                raise redis.ResponseError("the answer transaction was aborted")
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return list(replies), replicas

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

    # Worker side ---------------------------------------------------------------
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

    def open_job_images(self, refs: Sequence[bytes]) -> list[bytes]:
        """The messages behind the job image references a worker took, marking their jobs
        running. An image whose job was cancelled or has ended, or that was answered already, has
        none and is left out, never computed; so is a reference that cannot be read."""
        images = []
        for raw in refs:
            try:
                images.append(JobImage.from_bytes(raw))
            except MessageError as exc:
                log.error("dropping a bulk lane entry that is not a job image (%s): %.60r", exc, raw)
        if not images:
            return []
        keys = [key for i in images for key in (self.keys.job(i.job_id), self.keys.job_images(i.job_id))]
        messages = self._open_job_images(keys=keys, args=[image.index for image in images])
        return [message for message in messages if message is not None]

    def answer(
        self,
        worker_id: str,
        answers: Sequence[Answer],
        result_ttl: int,
        job_ttl: int = 3600,
        expired_jobs: Sequence[str] = (),
    ) -> int:
        """Write the answers (interactive ones only while awaited, job ones once each), mark the
        ``expired_jobs`` (their images were dropped for their deadline) and clear this worker's
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
                waiting_keys += [self.keys.waiting(answer.reply_to), self.keys.result(answer.reply_to)]
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
        commands.append(("DEL", *self._held_keys(worker_id)))
        # Job answers wait for a replica; when none acknowledges, they stay written on the primary
        # and NotReplicated says so (every step is idempotent, so running it again is safe). An
        # interactive answer lost with its primary costs its client a 504, which the promise allows.
        jobs_answered = len(job_keys) > 1
        results, replicas = self._replicated(commands, transaction=True, wait=jobs_answered)
        if replicas < self.min_replicas and jobs_answered:
            raise NotReplicated(f"answers reached {replicas} of {self.min_replicas} replicas in time")
        return sum(int(cast(int, written)) for written in results[:scripts_run])

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

    def _held_keys(self, worker_id: str) -> list[str]:
        """A worker's processing lists and the owners lists beside them."""
        return [
            self.keys.processing(worker_id),
            self.keys.processing(worker_id, BULK),
            self.keys.owners(worker_id),
            self.keys.owners(worker_id, BULK),
        ]

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
