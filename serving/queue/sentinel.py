"""Redis Sentinel: the ``redis+sentinel://`` URL (redis-py has none) and clients that follow
the primary Sentinel names.

    redis+sentinel://[[username]:password@]host1[:26379][,host2[:26379]...]/service[/db][?options]
    rediss+sentinel://...   (TLS to the sentinels and to the data nodes)

The userinfo authenticates to the data nodes (primary and replicas), as in Kombu;
``sentinel_password`` and ``sentinel_username`` authenticate to the sentinels. Every other option
is a redis-py URL option (``socket_timeout``, ``ssl_ca_certs``, ...) parsed by redis-py itself,
applied to the data nodes, and the ``socket_*`` and ``ssl*`` ones to the sentinels as well
(redis-py copies none of them once ``sentinel_kwargs`` is given).
"""

from __future__ import annotations

# mypy: disable-error-code="no-untyped-call"
# (redis-py leaves its Sentinel, Cluster and raw-command entry points untyped.)
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

import redis
from redis.connection import SSLConnection, parse_url
from redis.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelConnectionPoolProxy,
    SentinelManagedConnection,
)

from serving.queue.primary import PrimaryWatch

SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
DEFAULT_SENTINEL_PORT = 26379


@dataclass
class SentinelURL:
    sentinels: list[tuple[str, int]]
    service: str
    db: int = 0
    tls: bool = False
    connection_kwargs: dict[str, Any] = field(default_factory=dict)  # the data nodes
    sentinel_kwargs: dict[str, Any] = field(default_factory=dict)  # the sentinels themselves


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SCHEMES


def parse_sentinel_url(url: str) -> SentinelURL:
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"not a Sentinel URL: {scheme}://")
    tls = SCHEMES[scheme]
    # urlsplit cannot take a comma list of host:port, so the netloc is split by hand.
    netloc, _, path_and_query = rest.partition("/")
    path, _, query = path_and_query.partition("?")
    if "?" in netloc:  # redis+sentinel://h:1?x=y has no path
        netloc, _, query = netloc.partition("?")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        userinfo, hosts = "", netloc
    sentinels = []
    for member in filter(None, hosts.split(",")):
        if member.startswith("["):  # [::1]:26379
            host, _, port = member[1:].partition("]")
            port = port.lstrip(":")
        else:
            host, _, port = member.partition(":")
        if not host:
            raise ValueError(f"a Sentinel URL names a sentinel without a host: {member!r}")
        sentinels.append((unquote(host), int(port) if port else DEFAULT_SENTINEL_PORT))
    if not sentinels:
        raise ValueError("a Sentinel URL needs at least one sentinel: redis+sentinel://host:26379/mymaster")
    parts = [unquote(part) for part in path.split("/") if part]
    if not parts:
        raise ValueError("a Sentinel URL needs the master's name: redis+sentinel://host:26379/mymaster")
    if len(parts) > 2:
        raise ValueError(f"a Sentinel URL's path is /service[/db], not {path!r}")
    db = int(parts[1]) if len(parts) > 1 else 0

    options = dict(parse_qsl(query))
    sentinel_kwargs: dict[str, Any] = {}
    for name in ("sentinel_password", "sentinel_username"):
        if name in options:
            sentinel_kwargs[name.removeprefix("sentinel_")] = options.pop(name)
    # redis-py parses the rest (and types it: socket_timeout a float, ...).
    stand_in = f"{'rediss' if tls else 'redis'}://{userinfo + '@' if userinfo else ''}placeholder/{db}"
    if options:
        stand_in += "?" + urlencode(options)
    kwargs = parse_url(stand_in)
    for drop in ("host", "port", "connection_class"):
        # connection_class=SSLConnection would bypass Sentinel: TLS here is ssl=True, which the
        # client below turns into its TLS connection class.
        kwargs.pop(drop, None)
    if tls:
        kwargs["ssl"] = True
    for key, value in kwargs.items():
        if key.startswith(("socket_", "ssl")):
            sentinel_kwargs.setdefault(key, value)
    return SentinelURL(
        sentinels,
        service=parts[0],
        db=int(kwargs.pop("db", db)),
        tls=tls,
        connection_kwargs=kwargs,
        sentinel_kwargs=sentinel_kwargs,
    )


class ResolvingSentinelConnection(SentinelManagedConnection):
    """A Sentinel-managed connection that asks Sentinel for the primary on *every* reconnect.

    redis-py (8.1, issue #3874) asks only when a connection leaves the pool; a command retried
    after its connection dropped reconnects to the address cached before, the old primary: to
    a dead port until the retries run out, or, worse, to an old primary that came back and
    takes writes that the new primary will never have. Here a retry goes through ``connect()``,
    which asks Sentinel."""

    _resolving = False

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self._sock:
            return
        if self._resolving:  # called back from connect_to(): connect to the address just found
            super().connect_check_health(check_health, retry_socket_connect)
            return
        self._resolving = True
        try:
            self.connect()  # discover the primary, then connect to it
        finally:
            self._resolving = False


class ResolvingSentinelSSLConnection(ResolvingSentinelConnection, SSLConnection):
    pass


class _WatchedProxy(SentinelConnectionPoolProxy):
    watch: PrimaryWatch

    def get_master_address(self) -> tuple[str, int]:
        address: tuple[str, int] = super().get_master_address()
        self.watch.note(f"{address[0]}:{address[1]}")
        return address


class WatchedSentinelPool(SentinelConnectionPool):
    """Sentinel's pool of primary connections, telling a PrimaryWatch each address it finds."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any):
        watch: PrimaryWatch = kwargs.pop("watch")
        super().__init__(service_name, sentinel_manager, **kwargs)
        proxy = _WatchedProxy(
            connection_pool=self,
            is_master=self.is_master,
            check_connection=self.check_connection,
            service_name=service_name,
            sentinel_manager=sentinel_manager,
        )
        proxy.watch = watch
        self.proxy = proxy
        self.connection_kwargs["connection_pool"] = proxy


def sentinel_client(url: str, watch: PrimaryWatch, **overrides: Any) -> redis.Redis:
    """A client of the primary the sentinels of ``url`` name now: it asks them again on every
    reconnect, and reconnects when a command finds it talks to a replica (READONLY)."""
    parsed = parse_sentinel_url(url)
    kwargs = {**parsed.connection_kwargs, **overrides}
    sentinel_kwargs = dict(parsed.sentinel_kwargs)
    for key in ("socket_timeout", "socket_connect_timeout"):
        if key in overrides:
            sentinel_kwargs.setdefault(key, overrides[key] if key == "socket_connect_timeout" else 1.0)
    tls = bool(kwargs.pop("ssl", False))
    sentinel = Sentinel(parsed.sentinels, sentinel_kwargs=sentinel_kwargs)
    client: redis.Redis = sentinel.master_for(
        parsed.service,
        redis_class=redis.Redis,
        connection_pool_class=WatchedSentinelPool,
        connection_class=ResolvingSentinelSSLConnection if tls else ResolvingSentinelConnection,
        watch=watch,
        db=parsed.db,
        **kwargs,
    )
    return client
