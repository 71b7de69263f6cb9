"""A waiting request notices at once that its client has gone.

    with abort_on_disconnect(request.environ):
        queue.wait_answers(...)          # ClientGone is raised in here when the client closes

No greenlet or thread of its own: a libev io watcher on the client's socket (public gevent API)
whose callback throws ``ClientGone`` into the waiting greenlet, the way ``gevent.Timeout``'s
timer does. redis-py closes a connection whose read is interrupted, so Redis drops the blocked
command at once and nothing is left waiting for a client that is gone. A pipelined request
wakes the watcher too; it is then only peeked at, and the watch ends without a throw.

The client socket comes from the server: gunicorn puts it in ``gunicorn.socket``, the
one-process server (serving/servers/gevent_server.py) in ``gevent.socket``. Elsewhere (Flask's
test client) there is none and the watch does nothing.
"""

from __future__ import annotations

import socket
from types import TracebackType
from typing import Any

import gevent

SOCKET_KEYS = ("gunicorn.socket", "gevent.socket")
READ = 1  # libev's EV_READ


class ClientGone(Exception):
    """The client closed its connection while its request was waiting (logged as 499).
    An Exception, not an OSError: redis-py never retries it."""


def client_socket(environ: dict[str, Any] | None) -> socket.socket | None:
    for key in SOCKET_KEYS:
        sock = (environ or {}).get(key)
        if sock is not None:
            return sock  # type: ignore[no-any-return]
    return None


class abort_on_disconnect:  # noqa: N801  # used as a context manager, named like one
    def __init__(self, environ: dict[str, Any] | None) -> None:
        self.sock = client_socket(environ)
        self.watcher: Any = None

    def __enter__(self) -> abort_on_disconnect:
        if self.sock is not None and self.sock.fileno() >= 0:
            self.greenlet = gevent.getcurrent()
            self.watcher = gevent.get_hub().loop.io(self.sock.fileno(), READ)
            self.watcher.start(self._readable)
        return self

    def _readable(self) -> None:  # runs in the hub
        assert self.sock is not None
        try:
            data = self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self.watcher.stop()  # end of stream, or a pipelined request: stop watching either way
        if data == b"":
            self.greenlet.throw(ClientGone())

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher.close()
            self.watcher = None
