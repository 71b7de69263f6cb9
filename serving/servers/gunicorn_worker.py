"""gunicorn's gthread worker, guarded against clients that open connections and do nothing.

gthread hands every new connection to a thread that waits up to 5 s for its first bytes, so a
few hundred idle connections occupy every thread and health checks time out; a request that has
begun to arrive is read by a thread with no time limit at all. This worker:

- waits for a new connection's first bytes in the event loop, holding no thread, for at most
  ``--idle-timeout`` (gunicorn's keepalive);
- gives each request's headers and body one deadline, ``--read-timeout`` from when a thread
  starts reading it, so a slow client holds a thread for that long at most;
- at the connection limit (``--max-connections``, gunicorn's worker_connections) closes the
  connection idle longest for a new one instead of refusing to accept.

A thread still reads the headers, so many slow clients at once can hold every thread for up to
``--read-timeout``: in production put nginx in front (deploy/nginx.conf), which buffers requests.

    gunicorn -c gunicorn.conf.py "run_keras_server:create_app()"   # gunicorn.conf.py selects it
"""

from __future__ import annotations

import errno
import selectors
import socket
import time
from functools import partial
from typing import Any, cast

from gunicorn.workers.gthread import TConn, ThreadWorker

from serving.settings import load_settings


class DeadlineSocket:
    """A socket whose reads share one deadline; everything else goes to the socket itself."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.deadline: float | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def recv(self, size: int, *flags: int) -> bytes:
        if self.deadline is None:
            return self._sock.recv(size, *flags)
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request did not arrive within the read timeout")
        prior = self._sock.gettimeout()
        self._sock.settimeout(remaining if prior is None else min(prior, remaining))
        try:
            return self._sock.recv(size, *flags)
        finally:
            self._sock.settimeout(prior)


class GuardedThreadWorker(ThreadWorker):
    def init_process(self) -> None:
        self.read_timeout = load_settings([]).read_timeout  # settings come from the environment
        super().init_process()

    def accept(self, listener: socket.socket) -> None:
        """Accept, and wait for the first bytes in the event loop rather than in a thread."""
        try:
            client, address = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        sock = cast(socket.socket, DeadlineSocket(client))  # stands in for the socket it wraps
        conn = TConn(self.cfg, sock, address, listener.getsockname())
        conn.timeout = time.monotonic() + self.cfg.keepalive
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn))
        self._make_room()

    def handle(self, conn: TConn) -> bool:
        sock = cast(DeadlineSocket, conn.sock)  # ``accept`` wrapped it
        sock.deadline = time.monotonic() + self.read_timeout  # this request's own deadline
        return super().handle(conn)

    def _make_room(self) -> None:
        """Below the connection limit, so accepting never stops: the connection whose idle time
        runs out first (waiting for a first request, or kept alive after one) makes way."""
        while self.nr_conns >= self.worker_connections - 1 and (self.pending_conns or self.keepalived_conns):
            queues = [q for q in (self.pending_conns, self.keepalived_conns) if q]
            oldest = min(queues, key=lambda queue: queue[0].timeout or 0.0)  # always set here
            conn = oldest.popleft()
            try:
                self.poller.unregister(conn.sock)
            except (OSError, KeyError, ValueError):
                pass
            self.nr_conns -= 1
            conn.close()
