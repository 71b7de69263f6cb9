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

import argparse

# mypy: disable-error-code="no-untyped-call"
# (redis-py leaves its Sentinel, Cluster and raw-command entry points untyped.)
from typing import Any
from urllib.parse import unquote

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import parse_url
from redis.driver_info import DriverInfo
from redis.retry import Retry

from serving.queue.primary import PrimaryWatch
from serving.queue.redis_queue import Client, RedisQueue
from serving.queue.sentinel import is_sentinel_url, sentinel_client

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}

DEFAULT_URL = "redis://127.0.0.1:6379/0"  # where Redis is looked for when none is configured
CONNECT_TIMEOUT_SECONDS = 0.5
# A blocking call's socket waits this much longer than the call itself may block.
BLOCKING_MARGIN_SECONDS = 5.0
SHORT_CALL_CONNECTIONS = 64  # short calls at once per process; more wait briefly for a free one
# Given once: otherwise every new connection reads redis-py's version from its package metadata
# (file-system work that stalls gevent's hub; disconnects make new connections all the time).
DRIVER = DriverInfo(name="redis-py", lib_version=redis.__version__)


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def is_replicated_url(url: str) -> bool:
    """Whether the URL names a Redis with replicas to fail over to (Sentinel or Cluster)."""
    return is_sentinel_url(url) or is_cluster_url(url)


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """``redis+cluster://[[user]:password@]host:port[,host:port...][?options]``: the startup
    nodes (any of the cluster's nodes) and the connection options, parsed by redis-py."""
    scheme, _, rest = url.partition("://")
    tls = CLUSTER_SCHEMES[scheme.lower()]
    netloc, _, query = rest.partition("?")
    netloc = netloc.rstrip("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        userinfo, hosts = "", netloc
    nodes = []
    for member in filter(None, hosts.split(",")):
        if member.startswith("["):  # [::1]:6379
            host, _, port = member[1:].partition("]")
            port = port.lstrip(":")
        else:
            host, _, port = member.partition(":")
        if not host:
            raise ValueError(f"a Cluster URL names a node without a host: {member!r}")
        nodes.append((unquote(host), int(port) if port else 6379))
    if not nodes:
        raise ValueError("a Cluster URL names at least one node: redis+cluster://host:6379")
    stand_in = f"{'rediss' if tls else 'redis'}://{userinfo + '@' if userinfo else ''}placeholder"
    if query:
        stand_in += "?" + query
    options = parse_url(stand_in)
    for drop in ("host", "port", "connection_class", "db"):
        options.pop(drop, None)
    if tls:
        options["ssl"] = True
    return nodes, options


def cluster_client(url: str, **kwargs: Any) -> RedisCluster:
    """A client of the cluster the URL's nodes belong to."""
    nodes, options = parse_cluster_url(url)
    return RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in nodes], **options, **kwargs)


def connect(
    url: str,
    timeout: float | None,
    watch: PrimaryWatch | None = None,
    *,
    max_connections: int = SHORT_CALL_CONNECTIONS,
    socket_read_size: int | None = None,
    pool_timeout: float = 1.0,
) -> Client:
    """A client whose calls fail after ``timeout`` seconds (None: no limit), over at most
    ``max_connections`` connections (on one Redis a call waits ``pool_timeout`` for a free one)."""
    common: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "socket_timeout": timeout,
        "retry": Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        "driver_info": DRIVER,
        **({"socket_read_size": socket_read_size} if socket_read_size else {}),
    }
    if is_sentinel_url(url):
        return sentinel_client(
            url,
            watch or PrimaryWatch(how="sentinel"),
            health_check_interval=30,
            max_connections=max_connections,
            **common,
        )
    if is_cluster_url(url):
        # A connection error refreshes the slot map; the callers retry with a backoff, since
        # the cluster's own retries come with none.
        return cluster_client(url, max_connections=max_connections, **common)
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=pool_timeout, health_check_interval=30, **common
    )
    return redis.Redis(connection_pool=pool)


def open_queue(
    url: str,
    name: str,
    *,
    call_timeout: float,
    longest_block: float,
    min_replicas: int | None = None,
    waiters: int = 16,
) -> RedisQueue:
    """The queue over a short-call client and a blocking-call client to the same Redis; the
    blocking one has a connection for each of ``waiters`` calls at once, and a socket timeout
    longer than ``longest_block``, the longest wait it serves. ``min_replicas`` None: 1 for a
    Sentinel or Cluster URL, else 0."""
    if min_replicas is None:
        min_replicas = 1 if is_replicated_url(url) else 0
    watch = PrimaryWatch(how="sentinel") if is_sentinel_url(url) else None
    blocking = connect(
        url,
        longest_block + BLOCKING_MARGIN_SECONDS,
        watch,
        max_connections=waiters + 16,
        socket_read_size=4096,  # answers and tokens are small: 4 KiB, not 64, per waiting client
    )
    # Short calls too: a thousand long-polls arriving at once each read their job first, and a
    # loaded hub holds a connection longer than the call takes. Connections are made on demand.
    short = connect(url, call_timeout, watch, max_connections=max(SHORT_CALL_CONNECTIONS, waiters + 16))
    return RedisQueue(short, name, blocking=blocking, min_replicas=min_replicas, watch=watch)


def patient_retry(seconds: float) -> Retry:
    """Retries with exponential backoff (capped at 1 s) for about ``seconds`` while Redis is away:
    a worker keeps trying to write answers its clients may still be waiting for."""
    return Retry(
        ExponentialBackoff(cap=1.0, base=0.05),
        retries=max(1, int(seconds) + 4),
        supported_errors=(redis.ConnectionError, redis.TimeoutError),
    )


def answers(url: str, timeout: float = 0.3) -> bool:
    client = connect(url, timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def deployment_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The parser of a command that manages a deployment in its Redis (serving.rollout,
    serving.tenants): --redis-url and --queue-name, defaulting to what the server reads."""
    from serving.settings import load_settings

    defaults = load_settings([])
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--redis-url", default=defaults.redis_url or DEFAULT_URL)
    parser.add_argument("--queue-name", default=defaults.queue_name, help="the deployment's --queue-name")
    return parser
