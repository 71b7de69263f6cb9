"""The Redis queue between web servers and model workers: key names and every operation on them.

Keys, all under the queue name ``Q`` (``QueueKeys`` builds them; nothing else does):

- ``Q``                          interactive lane: request messages (serving/messages.py), oldest first
- ``Q:bulk``                     bulk lane: job images, taken only to top up a batch
- ``Q:doorbell``                 a token workers block on; rung when work is queued (scripts.py)
- ``Q:waiting:<request>``        hash of the request's image indexes still awaited; the worker that
                                 deletes an index is the one that answers it (exactly one answer)
- ``Q:result:<request>``         list of the request's answers, popped by the waiting handler
- ``Q:processing:<worker>``      interactive messages a worker has taken and not yet answered
- ``Q:processing-bulk:<worker>`` the same for bulk messages
- ``Q:worker:<worker>``          heartbeat with a TTL (messages.Heartbeat)
- ``Q:stats``                    hash of deployment-wide batch counts (serving/metrics.py)

Every change that touches more than one key is one Lua script (serving/scripts.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import redis

from . import scripts
from .messages import BULK, INTERACTIVE, Answer, Heartbeat, MessageError

log = logging.getLogger(__name__)

# A batching window is waited out in steps this long, taking what arrived after each, so it ends
# as soon as the batch is full (Redis resolves blocking timeouts only to 1/hz, 100 ms by default).
WINDOW_STEP_SECONDS = 0.001


class QueueKeys:
    """Every Redis key name of one queue."""

    def __init__(self, name: str):
        self.name = name
        self.lanes = {INTERACTIVE: name, BULK: f"{name}:bulk"}
        self.doorbell = f"{name}:doorbell"
        self.stats = f"{name}:stats"

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


@dataclass(frozen=True)
class Batch:
    """Messages a worker took: interactive ones first."""

    interactive: list[bytes]
    bulk: list[bytes]

    def __len__(self) -> int:
        return len(self.interactive) + len(self.bulk)

    @property
    def messages(self) -> list[bytes]:
        return self.interactive + self.bulk


class RedisQueue:
    """The queue, over two clients: ``redis`` for short calls (it should have a short socket
    timeout, so a hung Redis fails fast) and ``blocking`` for the calls that block on purpose."""

    def __init__(self, client: redis.Redis, name: str, blocking: redis.Redis | None = None):
        self.redis = client
        self.blocking = blocking or client
        self.keys = QueueKeys(name)
        self._enqueue = client.register_script(scripts.ENQUEUE)
        self._take = client.register_script(scripts.TAKE)
        self._answer_requests = client.register_script(scripts.ANSWER_REQUESTS)
        self._withdraw = client.register_script(scripts.WITHDRAW)
        self._requeue = client.register_script(scripts.REQUEUE)

    @property
    def name(self) -> str:
        return self.keys.name

    # Web side ------------------------------------------------------------------
    def enqueue(
        self, request_id: str, messages: Sequence[bytes], max_length: int, keep_seconds: float
    ) -> bool:
        """Queue a request's image messages (in image order) unless the interactive lane holds
        ``max_length`` or more. False means full. The request's waiting marker outlives the
        wait by ``keep_seconds`` at most, and so expires if its web server dies."""
        keys = [self.keys.lane(INTERACTIVE), self.keys.waiting(request_id), self.keys.doorbell]
        return bool(self._enqueue(keys=keys, args=[max_length, int(keep_seconds * 1000), *messages]))

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
                raws += cast(list, self.redis.lpop(key, count - len(answers) - 1) or [])
            answers += [Answer.from_bytes(raw, request_id) for raw in raws]
        return answers

    def withdraw(self, request_id: str, unanswered: Sequence[bytes]) -> tuple[int, list[Answer]]:
        """Give up on a request: take back its unanswered messages still queued. Returns how many
        were taken back and the answers that landed meanwhile."""
        keys = [
            self.keys.lane(INTERACTIVE),
            self.keys.waiting(request_id),
            self.keys.result(request_id),
            self.keys.lane(BULK),
            self.keys.doorbell,
        ]
        removed, late = self._withdraw(keys=keys, args=list(unanswered))
        return int(removed), [Answer.from_bytes(raw, request_id) for raw in late]

    def depth(self, lane: str = INTERACTIVE) -> int:
        return int(self.redis.llen(self.keys.lane(lane)))

    # Worker side ---------------------------------------------------------------
    def take(self, worker_id: str, count: int) -> Batch:
        """Take up to ``count`` messages, interactive first, into this worker's processing lists."""
        if count <= 0:
            return Batch([], [])
        keys = [
            self.keys.lane(INTERACTIVE),
            self.keys.lane(BULK),
            self.keys.processing(worker_id),
            self.keys.processing(worker_id, BULK),
            self.keys.doorbell,
        ]
        interactive, bulk = self._take(keys=keys, args=[count])
        return Batch(interactive, bulk)

    def wait_for_work(self, timeout: float) -> bool:
        """Block until the doorbell rings or ``timeout`` passes. True when it rang."""
        return self.blocking.blpop([self.keys.doorbell], timeout=timeout) is not None

    def take_batch(self, worker_id: str, batch_size: int, window: float, idle_timeout: float) -> Batch:
        """Up to ``batch_size`` messages; blocks up to ``idle_timeout`` while both lanes are empty.

        When fewer than a full batch are queued, waits up to ``window`` seconds for more (the
        batching delay of Triton and TF Serving), ending as soon as the batch is full.
        """
        batch = self.take(worker_id, batch_size)
        if not batch and self.wait_for_work(idle_timeout):
            batch = self.take(worker_id, batch_size)
        window_ends = time.monotonic() + window
        while batch and len(batch) < batch_size and (left := window_ends - time.monotonic()) > 0:
            time.sleep(min(WINDOW_STEP_SECONDS, left))
            more = self.take(worker_id, batch_size - len(batch))
            batch = Batch(batch.interactive + more.interactive, batch.bulk + more.bulk)
        return batch

    def answer(self, worker_id: str, answers: Sequence[Answer], result_ttl: int) -> int:
        """Write the answers for images still awaited and clear this worker's processing lists,
        in one transaction. Returns how many answers were written."""
        pipe = self.redis.pipeline(transaction=True)
        keys: list[str] = []
        args: list = [result_ttl]
        for answer in answers:
            keys += [self.keys.waiting(answer.reply_to), self.keys.result(answer.reply_to)]
            args += [answer.index, answer.to_bytes()]
        if keys:
            self._answer_requests(keys=keys, args=args, client=pipe)
        pipe.delete(self.keys.processing(worker_id), self.keys.processing(worker_id, BULK))
        results = pipe.execute()
        return int(results[0]) if keys else 0

    def beat(self, worker_id: str, heartbeat: Heartbeat, ttl: float) -> None:
        self.redis.set(self.keys.heartbeat(worker_id), heartbeat.to_bytes(), px=int(ttl * 1000))

    def sign_off(self, worker_id: str) -> None:
        self.redis.delete(self.keys.heartbeat(worker_id))

    def live_workers(self) -> dict[str, Heartbeat]:
        """Worker id -> heartbeat, for every worker whose heartbeat has not expired. A heartbeat
        that cannot be read (a worker of another version) is logged and left out."""
        prefix = self.keys.heartbeat("")
        keys = list(self.redis.scan_iter(match=prefix + "*", count=200))
        if not keys:
            return {}
        workers = {}
        for key, raw in zip(keys, self.redis.mget(keys)):
            if raw is None:
                continue  # expired between SCAN and MGET
            worker_id = key.decode(errors="replace")[len(prefix) :]
            try:
                workers[worker_id] = Heartbeat.from_bytes(cast(bytes, raw))
            except MessageError as exc:
                log.warning("ignoring the heartbeat of worker %r: %s", worker_id, exc)
        return workers

    def requeue_dead(self) -> int:
        """Return the messages of every worker whose heartbeat expired. Returns how many."""
        workers = set()
        for lane in (INTERACTIVE, BULK):
            prefix = self.keys.processing("", lane)
            workers |= {
                key.decode()[len(prefix) :] for key in self.redis.scan_iter(match=prefix + "*", count=200)
            }
        moved = 0
        for worker_id in workers:
            keys = [
                self.keys.processing(worker_id),
                self.keys.processing(worker_id, BULK),
                self.keys.heartbeat(worker_id),
                self.keys.lane(INTERACTIVE),
                self.keys.lane(BULK),
                self.keys.doorbell,
            ]
            moved += int(self._requeue(keys=keys))
        return moved
