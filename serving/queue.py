"""The Redis protocol between web servers and model workers.

Keys, all under the queue name ``Q``:

- ``Q``                     list of JSON request messages, oldest first
- ``Q:waiting:<id>``        present while a client waits for request <id>; the worker that
                            deletes it is the one that answers (exactly one answer)
- ``Q:result:<id>``         list holding the one result, popped by the waiting handler
- ``Q:processing:<worker>`` messages a worker has taken and not yet answered
- ``Q:worker:<worker>``     heartbeat with a TTL; its value describes the worker's model

Every multi-step change is one Lua script, so web servers and workers on many machines
can share the queue without taking the same message twice or leaving keys behind.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

# Admit the message only while the queue is below its bound; mark the request as waiting.
_ENQUEUE = """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
redis.call('RPUSH', KEYS[1], ARGV[1])
return 1
"""

# Move up to ARGV[1] messages from the queue head to the worker's processing list.
_TAKE = """
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #items > 0 then
  redis.call('LTRIM', KEYS[1], #items, -1)
  redis.call('RPUSH', KEYS[2], unpack(items))
end
return items
"""

# KEYS: processing list, then (waiting, result) per item; ARGV: ttl, then one payload per item.
# A result is written only for a request still waiting, so a repeat answer is dropped.
_FINISH = """
local written = 0
for i = 2, #KEYS, 2 do
  if redis.call('DEL', KEYS[i]) == 1 then
    redis.call('RPUSH', KEYS[i + 1], ARGV[i / 2 + 1])
    redis.call('EXPIRE', KEYS[i + 1], ARGV[1])
    written = written + 1
  end
end
redis.call('DEL', KEYS[1])
return written
"""

# A client gives up: stop waiting, take its message back, and keep a result that just landed.
_WITHDRAW = """
redis.call('DEL', KEYS[2])
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1])
local late = redis.call('LPOP', KEYS[3])
redis.call('DEL', KEYS[3])
return {removed, late or false}
"""

# Return a dead worker's unfinished messages to the head of the queue, in their order.
_REQUEUE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local items = redis.call('LRANGE', KEYS[1], 0, -1)
for i = #items, 1, -1 do redis.call('LPUSH', KEYS[3], items[i]) end
redis.call('DEL', KEYS[1])
return #items
"""


def connect(url: str, *, read_timeout: float | None = None) -> redis.Redis:
    """A client that fails fast when Redis is down, so callers can answer 503 at once."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=0.5,
        socket_timeout=read_timeout,
        retry=Retry(NoBackoff(), 1),  # one retry replaces a pooled connection Redis dropped
        health_check_interval=30,
    )


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Finished:
    """One answer for one message: the request id and its JSON-serialisable payload."""

    request_id: str
    payload: dict


class RedisQueue:
    def __init__(self, client: redis.Redis, name: str):
        self.redis = client
        self.name = name
        self._enqueue = client.register_script(_ENQUEUE)
        self._take = client.register_script(_TAKE)
        self._finish = client.register_script(_FINISH)
        self._withdraw = client.register_script(_WITHDRAW)
        self._requeue = client.register_script(_REQUEUE)

    # Key names -----------------------------------------------------------------
    def waiting_key(self, request_id: str) -> str:
        return f"{self.name}:waiting:{request_id}"

    def result_key(self, request_id: str) -> str:
        return f"{self.name}:result:{request_id}"

    def processing_key(self, worker_id: str) -> str:
        return f"{self.name}:processing:{worker_id}"

    def heartbeat_key(self, worker_id: str) -> str:
        return f"{self.name}:worker:{worker_id}"

    # Web side ------------------------------------------------------------------
    def enqueue(self, message: bytes, request_id: str, max_length: int, wait_seconds: float) -> bool:
        """Queue a message unless the queue is full. False means full."""
        keep_ms = int((wait_seconds + 5) * 1000)  # outlives the wait, expires if the web dies
        keys = [self.name, self.waiting_key(request_id)]
        return bool(self._enqueue(keys=keys, args=[message, max_length, keep_ms]))

    def wait_result(self, request_id: str, timeout: float) -> bytes | None:
        if timeout <= 0:
            return None
        popped = self.redis.blpop([self.result_key(request_id)], timeout=timeout)
        return popped[1] if popped else None

    def withdraw(self, message: bytes, request_id: str) -> tuple[bool, bytes | None]:
        """Give up on a request. Returns (message was still queued, result that arrived late)."""
        keys = [self.name, self.waiting_key(request_id), self.result_key(request_id)]
        removed, late = self._withdraw(keys=keys, args=[message])
        return bool(removed), late or None

    def depth(self) -> int:
        return int(self.redis.llen(self.name))

    # Worker side ---------------------------------------------------------------
    def take_first(self, worker_id: str, timeout: float) -> bytes | None:
        """Block until a message arrives (or timeout) and move it to the processing list."""
        return self.redis.blmove(self.name, self.processing_key(worker_id), timeout, "LEFT", "RIGHT")

    def take_more(self, worker_id: str, count: int) -> list[bytes]:
        if count <= 0:
            return []
        return self._take(keys=[self.name, self.processing_key(worker_id)], args=[count])

    def take_batch(self, worker_id: str, batch_size: int, window: float, idle_timeout: float) -> list[bytes]:
        """Block until work arrives, then take up to batch_size messages.

        When the queue holds less than a full batch, wait ``window`` seconds once for more
        (the batching delay of Triton and TF Serving): a sleep rather than a blocking pop,
        because Redis resolves blocking timeouts only to 1/hz (100 ms by default).
        Everything taken sits in the worker's processing list until ``finish``.
        """
        first = self.take_first(worker_id, idle_timeout)
        if first is None:
            return []
        batch = [first, *self.take_more(worker_id, batch_size - 1)]
        if len(batch) < batch_size and window > 0:
            time.sleep(window)
            batch += self.take_more(worker_id, batch_size - len(batch))
        return batch

    def finish(self, worker_id: str, answers: list[Finished], result_ttl: int) -> int:
        """Write answers for requests still waiting and clear the processing list, atomically."""
        keys = [self.processing_key(worker_id)]
        args: list = [result_ttl]
        for answer in answers:
            keys += [self.waiting_key(answer.request_id), self.result_key(answer.request_id)]
            args.append(orjson.dumps(answer.payload))
        return int(self._finish(keys=keys, args=args))

    def beat(self, worker_id: str, info: dict, ttl: float) -> None:
        self.redis.set(self.heartbeat_key(worker_id), orjson.dumps(info), px=int(ttl * 1000))

    def sign_off(self, worker_id: str) -> None:
        self.redis.delete(self.heartbeat_key(worker_id))

    def live_workers(self) -> dict[str, dict]:
        """Worker id -> heartbeat info, for every worker whose heartbeat has not expired."""
        prefix = self.heartbeat_key("")
        keys = list(self.redis.scan_iter(match=prefix + "*", count=200))
        if not keys:
            return {}
        values = self.redis.mget(keys)
        return {
            key.decode()[len(prefix):]: orjson.loads(value)
            for key, value in zip(keys, values)
            if value is not None
        }

    def requeue_dead(self) -> int:
        """Return the messages of every worker whose heartbeat expired. Returns how many."""
        prefix = self.processing_key("")
        moved = 0
        for key in self.redis.scan_iter(match=prefix + "*", count=200):
            worker_id = key.decode()[len(prefix):]
            moved += int(self._requeue(keys=[key, self.heartbeat_key(worker_id), self.name]))
        return moved
