"""Which Redis primary a process talks to, and how often that changed: for the log (one line
when a process moves to a new primary), /readyz and /metrics."""

from __future__ import annotations

import logging
import threading

import redis
from redis.cluster import RedisCluster

log = logging.getLogger(__name__)


class PrimaryWatch:
    """The primary's address as last seen. Every client of a process that finds the primary
    reports it here (a Sentinel-managed pool at each discovery, a cluster client when it looks
    up the queue's slot); a new address after the first is a move, logged and counted once, however
    many pools see it."""

    def __init__(self, address: str | None = None, how: str = "redis"):
        self.how = how  # "redis", "sentinel" or "cluster": how the primary is found
        self.address = address
        self.changes = 0
        self._lock = threading.Lock()

    @classmethod
    def of_client(cls, client: redis.Redis | RedisCluster) -> PrimaryWatch:
        """For a client whose primary never moves (a plain Redis), or is looked up per call."""
        if isinstance(client, RedisCluster):
            return cls(None, "cluster")
        kwargs = client.connection_pool.connection_kwargs
        if "path" in kwargs:
            return cls(f"unix:{kwargs['path']}")
        return cls(f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}")

    def note(self, address: str) -> None:
        with self._lock:
            if address == self.address:
                return
            previous, self.address = self.address, address
            if previous is None:
                log.info("Redis primary (%s): %s", self.how, address)
                return
            self.changes += 1
        log.warning("Redis primary moved (%s): %s -> %s", self.how, previous, address)
