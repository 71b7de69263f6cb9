"""The wire between the tiers: key names (keys.py), the Lua scripts (scripts.py), the records
(messages.py), every operation (redis_queue.py and its parts), clients and their timeouts (connection.py), and
the embedded redis-server for one-process use (embedded.py). Web and worker meet only here."""

from serving.queue.connection import DEFAULT_URL, connect, open_queue
from serving.queue.keys import QueueKeys
from serving.queue.redis_queue import EMPTY, Batch, JobSpec, RedisQueue

__all__ = ["DEFAULT_URL", "EMPTY", "Batch", "JobSpec", "QueueKeys", "RedisQueue", "connect", "open_queue"]
