"""Redis clients with the timeouts the service relies on.

A Redis that is alive but does not answer (overloaded, paused, a network that drops packets)
must turn into a fast 503, never a hung request. So every call gets a short socket timeout of
its own, except the few that block on purpose (a handler waiting for its answers, a worker
waiting for work), which go through a second client whose timeout covers their longest wait.
A dropped pooled connection is retried once at once; a timeout is never retried, which would
double it.

Under gevent a web process has as many blocking calls at once as it has waiting clients, so
its pools are sized for them (redis-py's default pool refuses the 101st connection outright);
a pool that is out of connections makes a call wait ``CALL_TIMEOUT`` for one, then fail.
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.driver_info import DriverInfo
from redis.retry import Retry

from serving.queue.redis_queue import RedisQueue

DEFAULT_URL = "redis://127.0.0.1:6379/0"  # where Redis is looked for when none is configured
CONNECT_TIMEOUT_SECONDS = 0.5
# A blocking call's socket waits this much longer than the call itself may block.
BLOCKING_MARGIN_SECONDS = 5.0
SHORT_CALL_CONNECTIONS = 64  # short calls at once per process; more wait briefly for a free one
# Given once: otherwise every new connection reads redis-py's version from its package metadata
# (file-system work that stalls gevent's hub; disconnects make new connections all the time).
DRIVER = DriverInfo(name="redis-py", lib_version=redis.__version__)


def connect(
    url: str,
    timeout: float | None,
    *,
    max_connections: int = SHORT_CALL_CONNECTIONS,
    socket_read_size: int | None = None,
    pool_timeout: float = 1.0,
) -> redis.Redis:
    """A client whose calls fail after ``timeout`` seconds (None: no limit), over at most
    ``max_connections`` connections (a call waits ``pool_timeout`` for a free one)."""
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        health_check_interval=30,
        driver_info=DRIVER,
        **({"socket_read_size": socket_read_size} if socket_read_size else {}),
    )
    return redis.Redis(connection_pool=pool)


def open_queue(
    url: str, name: str, *, call_timeout: float, longest_block: float, waiters: int = 16
) -> RedisQueue:
    """The queue over a short-call client and a blocking-call client to the same Redis; the
    blocking one has a connection for each of ``waiters`` calls at once, and a socket timeout
    longer than ``longest_block``, the longest wait it serves."""
    blocking = connect(
        url,
        longest_block + BLOCKING_MARGIN_SECONDS,
        max_connections=waiters + 16,
        socket_read_size=4096,  # answers and tokens are small: 4 KiB, not 64, per waiting client
    )
    # Short calls too: a thousand long-polls arriving at once each read their job first, and a
    # loaded hub holds a connection longer than the call takes. Connections are made on demand.
    short = connect(url, call_timeout, max_connections=max(SHORT_CALL_CONNECTIONS, waiters + 16))
    return RedisQueue(short, name, blocking=blocking)


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
