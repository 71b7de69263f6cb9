"""What every queue operation stands on: the two clients, the key names, the registered Lua
scripts, and writes that must reach replicas (run on one connection, then WAIT)."""

from __future__ import annotations

# mypy: disable-error-code="no-untyped-call"
# (redis-py leaves its Sentinel, Cluster and raw-command entry points untyped.)
from collections.abc import Sequence

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script

from serving.queue import scripts
from serving.queue.keys import QueueKeys
from serving.queue.messages import INTERACTIVE
from serving.queue.primary import PrimaryWatch


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


class QueueBase:
    """What the queue's parts share: two clients, ``redis`` for short calls (it should have a short socket
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
        self._withdraw = client.register_script(scripts.WITHDRAW)
        self._requeue = client.register_script(scripts.REQUEUE)
        self._cancel_job = client.register_script(scripts.CANCEL_JOB)
        # The tenants (interactive, bulk) the last take filled from: the next one names them.
        self._tenants_expected: tuple[list[str], list[str]] = ([], [])

    @property
    def name(self) -> str:
        return self.keys.name

    def depth(self, lane: str = INTERACTIVE) -> int:
        return int(self.redis.llen(self.keys.lane(lane)))

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

    def _after_writes(
        self,
        writes: Sequence[tuple[object, ...]],
        script: Script,
        keys: Sequence[str],
        args: Sequence[str | int | float | bytes],
    ) -> object:
        """Run plain ``writes``, then ``script``, pipelined on one connection (one round trip, in
        this order); the script's reply. The writes must be safe to repeat: when Redis does not
        know the script yet (a fresh primary), the script is loaded and run again."""
        pipe = self.redis.pipeline(transaction=False)
        for write in writes:
            pipe.execute_command(*write)
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        replies = pipe.execute(raise_on_error=False)
        for reply in replies[:-1]:
            if isinstance(reply, Exception):
                raise reply
        if isinstance(replies[-1], redis.exceptions.NoScriptError):
            return script(keys=keys, args=args)
        if isinstance(replies[-1], Exception):
            raise replies[-1]
        return replies[-1]

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
