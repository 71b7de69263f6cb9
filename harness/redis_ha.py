"""Redis with replicas on loopback, for the failover tests and the failover benchmark: a
Sentinel-managed primary with replicas, and a Redis Cluster. (Moved from the failover research;
the findings behind its defaults are in the README's "Surviving the loss of Redis".)

Every server binds 127.0.0.1 only, on a free port, in a temporary directory of its own, with
no persistence. Every child gets PR_SET_PDEATHSIG=SIGKILL, so a test runner killed with -9
leaves no redis-server behind.

    with SentinelHarness(replicas=2, sentinels=3) as ha:
        client = ha.sentinel_client().master_for(ha.service, socket_timeout=0.5)
        ...
        old = ha.kill_primary()                      # SIGKILL
        new = ha.wait_for_failover(old, timeout=30)  # the port sentinels now report

    with ClusterHarness(primaries=3, replicas_per_primary=1) as cluster:
        rc = cluster.client()                        # redis.cluster.RedisCluster
        node = cluster.primary_for_key("{Q}")
        cluster.kill(node)
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

import redis

from harness.redis_nodes import (
    HOST,
    RedisBinaries,
    RedisProcess,
    TlsFiles,
    default_binaries,
    free_port,
    raw_command,
    wait_until,
)

__all__ = ["ClusterHarness", "SentinelHarness"]


class SentinelHarness:
    """A primary, ``replicas`` replicas (replicaof) and ``sentinels`` sentinels monitoring it
    as ``service`` with ``quorum``."""

    def __init__(
        self,
        replicas: int = 2,
        sentinels: int = 3,
        quorum: int = 2,
        *,
        service: str = "mymaster",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        parallel_syncs: int = 1,
        password: str | None = None,
        sentinel_password: str | None = None,
        min_replicas_to_write: int = 0,
        min_replicas_max_lag: int = 10,
        extra_server_config: Iterable[str] = (),
        tls: bool = False,
        binaries: RedisBinaries | None = None,
    ):
        self.binaries = binaries or default_binaries()
        self.service = service
        self.password = password
        self.sentinel_password = sentinel_password
        self.root = Path(tempfile.mkdtemp(prefix="sentinel-harness-"))
        self.tls = TlsFiles.make(self.root / "tls") if tls else None
        server_config = [
            "replica-read-only yes",
            "repl-diskless-sync yes",  # no RDB file written for a full sync
            "repl-diskless-sync-delay 0",
            f"min-replicas-to-write {min_replicas_to_write}",
            f"min-replicas-max-lag {min_replicas_max_lag}",
            *extra_server_config,
        ]
        if password:
            # every node may become primary (requirepass) and replica (masterauth)
            server_config += [f'requirepass "{password}"', f'masterauth "{password}"']
        self.servers: list[RedisProcess] = []
        primary_port = free_port()
        self.servers.append(
            RedisProcess(
                "primary",
                primary_port,
                server_config,
                self.binaries,
                root=self.root,
                tls=self.tls,
                password=password,
            )
        )
        for i in range(replicas):
            self.servers.append(
                RedisProcess(
                    f"replica{i + 1}",
                    free_port(),
                    [*server_config, f"replicaof {HOST} {primary_port}"],
                    self.binaries,
                    root=self.root,
                    tls=self.tls,
                    password=password,
                )
            )
        sentinel_config = [
            f"sentinel monitor {service} {HOST} {primary_port} {quorum}",
            f"sentinel down-after-milliseconds {service} {down_after_ms}",
            f"sentinel failover-timeout {service} {failover_timeout_ms}",
            f"sentinel parallel-syncs {service} {parallel_syncs}",
        ]
        if password:
            sentinel_config.append(f'sentinel auth-pass {service} "{password}"')
        if sentinel_password:
            # Sentinels use their own requirepass to talk to each other too.
            sentinel_config.append(f'requirepass "{sentinel_password}"')
        self.sentinels = [
            RedisProcess(
                f"sentinel{i + 1}",
                free_port(),
                sentinel_config,
                self.binaries,
                sentinel=True,
                root=self.root,
                tls=self.tls,
                password=sentinel_password,
            )
            for i in range(sentinels)
        ]

    # lifecycle
    def start(self, wait: float = 30.0) -> SentinelHarness:
        try:
            for server in self.servers:
                server.start()
            self.wait_replicas_synced(wait)
            for s in self.sentinels:
                s.start()
            self.wait_sentinels_ready(wait)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for p in [*self.sentinels, *self.servers]:
            p.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> SentinelHarness:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # addresses and clients
    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [(HOST, s.port) for s in self.sentinels]

    def sentinel_url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinel_addresses)
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        query = []
        if self.sentinel_password:
            query.append(f"sentinel_password={self.sentinel_password}")
        if self.tls:
            query.append(f"ssl_ca_certs={self.tls.cert}")
        return f"{scheme}://{auth}{hosts}/{self.service}/{db}" + ("?" + "&".join(query) if query else "")

    def sentinel_client(self, **connection_kwargs) -> redis.sentinel.Sentinel:
        import redis.sentinel

        sentinel_kwargs = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}
        if self.sentinel_password:
            sentinel_kwargs["password"] = self.sentinel_password
        if self.tls:
            sentinel_kwargs.update(self.tls.client_kwargs())
            for k, v in self.tls.client_kwargs().items():
                connection_kwargs.setdefault(k, v)  # ssl=True -> SentinelManagedSSLConnection
        if self.password:
            connection_kwargs.setdefault("password", self.password)
        return redis.sentinel.Sentinel(
            self.sentinel_addresses, sentinel_kwargs=sentinel_kwargs, **connection_kwargs
        )

    def _sentinel_conn(self, s: RedisProcess) -> redis.Redis:
        return s.client(socket_timeout=0.5, password=self.sentinel_password)

    def server_by_port(self, port: int) -> RedisProcess:
        return next(s for s in self.servers if s.port == port)

    def direct(self, server: RedisProcess, **kwargs) -> redis.Redis:
        return server.client(
            password=self.password, socket_timeout=kwargs.pop("socket_timeout", 1.0), **kwargs
        )

    # state
    def reported_primaries(self) -> list[int | None]:
        """The primary port each live sentinel reports (None for one that does not answer)."""
        ports: list[int | None] = []
        for s in self.sentinels:
            try:
                with contextlib.closing(self._sentinel_conn(s)) as c:
                    _, port = c.sentinel_get_master_addr_by_name(self.service)
                    ports.append(int(port))
            except (redis.RedisError, TypeError):
                ports.append(None)
        return ports

    def primary(self) -> RedisProcess:
        ports = {p for p in self.reported_primaries() if p is not None}
        if len(ports) != 1:
            raise RuntimeError(f"sentinels disagree on the primary: {ports}")
        return self.server_by_port(ports.pop())

    def wait_replicas_synced(self, timeout: float = 30.0) -> None:
        primary = self.servers[0]
        want = len(self.servers) - 1

        def synced() -> bool:
            with contextlib.closing(self.direct(primary)) as c:
                info = c.info("replication")
            online = [
                v
                for k, v in info.items()
                if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
            ]
            return len(online) >= want

        wait_until(synced, timeout, "replicas to sync")

    def wait_sentinels_ready(self, timeout: float = 30.0) -> None:
        """Every sentinel knows every replica and every other sentinel (otherwise a kill now may
        find no quorum, or nobody to promote)."""
        want_replicas, want_sentinels = len(self.servers) - 1, len(self.sentinels) - 1

        def ready() -> bool:
            for s in self.sentinels:
                with contextlib.closing(self._sentinel_conn(s)) as c:
                    m = c.sentinel_master(self.service)
                    if m["num-slaves"] < want_replicas or m["num-other-sentinels"] < want_sentinels:
                        return False
            return True

        wait_until(ready, timeout, "sentinels to discover replicas and each other", interval=0.1)

    # faults
    def kill_primary(self) -> RedisProcess:
        primary = self.primary()
        primary.kill()
        return primary

    def wait_for_failover(
        self, old: RedisProcess, timeout: float = 30.0, all_sentinels: bool = False
    ) -> RedisProcess:
        """Wait until a sentinel (or all live ones) reports a primary other than ``old`` and that
        node says it is a master. Returns it."""

        def moved():
            ports = [p for p in self.reported_primaries() if p is not None]
            new = {p for p in ports if p != old.port}
            if not new or (all_sentinels and (len(set(ports)) != 1)):
                return None
            candidate = self.server_by_port(next(iter(new)))
            return candidate if candidate.role() == "master" else None

        return wait_until(moved, timeout, "sentinels to promote a replica", interval=0.02)

    def wait_role(self, server: RedisProcess, role: str, timeout: float = 30.0) -> None:
        wait_until(lambda: server.role() == role, timeout, f"{server.name} to become {role}", interval=0.05)


# Cluster -----------------------------------------------------------------------------------
class ClusterHarness:
    """``primaries`` cluster primaries with ``replicas_per_primary`` replicas each, created with
    ``redis-cli --cluster create`` (``create_with='cli'``) or CLUSTER MEET/ADDSLOTS/REPLICATE
    from Python (``create_with='python'``)."""

    def __init__(
        self,
        primaries: int = 3,
        replicas_per_primary: int = 1,
        *,
        node_timeout_ms: int = 1000,
        create_with: str = "cli",
        extra_config: Iterable[str] = (),
        binaries: RedisBinaries | None = None,
    ):
        self.binaries = binaries or default_binaries()
        self.root = Path(tempfile.mkdtemp(prefix="cluster-harness-"))
        self.primaries_wanted = primaries
        self.replicas_per_primary = replicas_per_primary
        self.create_with = create_with
        config = [
            "cluster-enabled yes",
            'cluster-config-file "nodes.conf"',
            f"cluster-node-timeout {node_timeout_ms}",
            "cluster-require-full-coverage yes",
            "repl-diskless-sync yes",
            "repl-diskless-sync-delay 0",
            *extra_config,
        ]
        self.nodes = [
            RedisProcess(f"node{i + 1}", free_port(cluster_bus=True), config, self.binaries, root=self.root)
            for i in range(primaries * (1 + replicas_per_primary))
        ]

    def start(self, wait: float = 60.0) -> ClusterHarness:
        try:
            for n in self.nodes:
                n.start()
            if self.create_with == "cli":
                self._create_with_cli()
            else:
                self._create_with_python()
            self.wait_healthy(wait)
        except BaseException:
            self.stop()
            raise
        return self

    def _create_with_cli(self) -> None:
        out = subprocess.run(
            [
                self.binaries.cli,
                "--cluster",
                "create",
                *[f"{HOST}:{n.port}" for n in self.nodes],
                "--cluster-replicas",
                str(self.replicas_per_primary),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            env=self.binaries.full_env(),
            timeout=120,
        )
        if out.returncode != 0 or "[OK] All 16384 slots covered" not in out.stdout:
            raise RuntimeError(
                f"redis-cli --cluster create failed: {out.stdout[-2000:]} {out.stderr[-2000:]}"
            )

    def _create_with_python(self) -> None:
        primaries = self.nodes[: self.primaries_wanted]
        replicas = self.nodes[self.primaries_wanted :]
        clients = {n.port: n.client(socket_timeout=2) for n in self.nodes}
        step = 16384 // len(primaries)
        for i, p in enumerate(primaries):
            first, last = i * step, (16383 if i == len(primaries) - 1 else (i + 1) * step - 1)
            clients[p.port].execute_command(
                "CLUSTER ADDSLOTS", *range(first, last + 1)
            )  # ADDSLOTSRANGE is 7.0+
        for n in self.nodes[1:]:
            clients[n.port].execute_command("CLUSTER MEET", HOST, self.nodes[0].port)
        ids = {p.port: raw_command(p.port, "CLUSTER", "MYID") for p in primaries}

        def everyone_knows_everyone() -> bool:
            for n in self.nodes:
                nodes = raw_command(n.port, "CLUSTER", "NODES").strip().splitlines()
                if len(nodes) < len(self.nodes) or any("handshake" in line for line in nodes):
                    return False
            return True

        wait_until(everyone_knows_everyone, 30, "CLUSTER MEET to propagate", interval=0.1)
        for i, r in enumerate(replicas):
            primary = primaries[i % len(primaries)]
            wait_until(
                lambda r=r, primary=primary: clients[r.port].execute_command(
                    "CLUSTER REPLICATE", ids[primary.port]
                ),
                30,
                "CLUSTER REPLICATE",
                interval=0.2,
            )
        for c in clients.values():
            c.close()

    def wait_healthy(self, timeout: float = 60.0, nodes: Iterable[RedisProcess] | None = None) -> None:
        """cluster_state:ok on every live node, each primary with its replicas attached."""

        def ok() -> bool:
            for n in nodes or [n for n in self.nodes if n.alive]:
                if "cluster_state:ok" not in raw_command(n.port, "CLUSTER", "INFO"):
                    return False
            return True

        wait_until(ok, timeout, "cluster_state:ok", interval=0.1)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> ClusterHarness:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(HOST, n.port) for n in self.nodes]

    def client(self, **kwargs):
        from redis.cluster import ClusterNode, RedisCluster

        kwargs.setdefault("socket_connect_timeout", 0.5)
        kwargs.setdefault("socket_timeout", 1.0)
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in self.startup_nodes], **kwargs)

    def node_by_port(self, port: int) -> RedisProcess:
        return next(n for n in self.nodes if n.port == port)

    def cluster_nodes(self, via: RedisProcess | None = None) -> list[dict]:
        via = via or next(n for n in self.nodes if n.alive)
        text = raw_command(via.port, "CLUSTER", "NODES")
        rows = []
        for line in text.strip().splitlines():
            parts = line.split()
            rows.append(
                {
                    "id": parts[0],
                    "port": int(parts[1].split("@")[0].rsplit(":", 1)[1]),
                    "flags": parts[2].split(","),
                    "master": parts[3],
                    "slots": parts[8:],
                }
            )
        return rows

    def primary_for_key(self, key: str, via: RedisProcess | None = None) -> RedisProcess:
        via = via or next(n for n in self.nodes if n.alive)
        slot = raw_command(via.port, "CLUSTER", "KEYSLOT", key)
        for start, end, primary, *_ in raw_command(via.port, "CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return self.node_by_port(int(primary[1]))
        raise RuntimeError(f"no node serves slot of {key!r}")

    def replicas_of(self, primary: RedisProcess) -> list[RedisProcess]:
        rows = self.cluster_nodes()
        pid = next(r["id"] for r in rows if r["port"] == primary.port)
        return [self.node_by_port(r["port"]) for r in rows if r["master"] == pid]
