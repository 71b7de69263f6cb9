"""Redis clients with the timeouts the service relies on.

A Redis that is alive but does not answer (overloaded, paused, a network that drops packets)
must turn into a fast 503, never a hung request. So every call gets a short socket timeout of
its own, except the few that block on purpose (a handler waiting for its answers, a worker
waiting for work), which go through a second client whose timeout covers their longest wait.
A dropped pooled connection is retried once at once; a timeout is never retried, which would
double it.
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from serving.queue.redis_queue import RedisQueue

DEFAULT_URL = "redis://127.0.0.1:6379/0"  # where Redis is looked for when none is configured
CONNECT_TIMEOUT_SECONDS = 0.5
# A blocking call's socket waits this much longer than the call itself may block.
BLOCKING_MARGIN_SECONDS = 5.0


def connect(url: str, timeout: float | None) -> redis.Redis:
    """A client whose calls fail after ``timeout`` seconds (None: no limit)."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        health_check_interval=30,
    )


def open_queue(url: str, name: str, *, call_timeout: float, longest_block: float) -> RedisQueue:
    """The queue over a short-call client and a blocking-call client to the same Redis."""
    return RedisQueue(
        connect(url, call_timeout), name, blocking=connect(url, longest_block + BLOCKING_MARGIN_SECONDS)
    )


def patient_retry(seconds: float) -> Retry:
    """Retries with exponential backoff (capped at 1 s) for about ``seconds`` while Redis is away:
    a worker keeps trying to write answers its clients may still be waiting for."""
    return Retry(
        ExponentialBackoff(cap=1.0, base=0.05),
        retries=max(1, int(seconds) + 4),
        supported_errors=(redis.ConnectionError, redis.TimeoutError),
    )


def answers(url: str, timeout: float = 0.3) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()
