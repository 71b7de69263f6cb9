"""The HTTP server for `python run_keras_server.py`: gevent's own WSGI server (gevent.pywsgi),
guarded against idle and slow clients through its documented extension points only (a
``WSGIHandler`` subclass given as ``handler_class``; ``Pool`` and ``Greenlet`` methods).

Every connection is a greenlet, so a request that waits on Redis (an answer, a long-poll, an
event stream) holds no thread. What pywsgi lacks, added here:

- an idle timeout: the wait for a request line (new or kept-alive connection) ends after
  ``--idle-timeout``;
- a read deadline: a request's headers must arrive within ``--read-timeout`` of its first
  line, and its body within ``--read-timeout`` more (serving/web/body.py, in the app, so under
  gunicorn too);
- at the connection limit (``--max-connections``) the connections idle longest, then the
  slowest partial requests, are closed to make room, so idle clients cannot lock others out;
- the client socket in the environ (``gevent.socket``) for the disconnect watcher
  (serving/web/disconnect.py);
- TCP_NODELAY (pywsgi writes headers and body apart: without it every keep-alive answer waits
  out a 40 ms delayed ACK) and a listen backlog of 2048 (gevent's default, 128, overflows in a
  burst of long-polls);
- headers parsed as headers only: pywsgi's parser (``http.client.parse_headers``) reads the
  header block as a whole e-mail message and, for a multipart upload, compiles a regular
  expression from its boundary, new in every request (0.4 ms of CPU on a 2-core EPYC);
- a graceful stop: stop listening, close idle connections, answer long-polls and end event
  streams at once (the app's ``end_waits``), let what is in flight finish.

The process must be monkey-patched before anything imports socket, ssl or redis
(run_keras_server.py and serving/__main__.py do it first); gunicorn's gevent worker patches on
its own and never imports this module.
"""

from __future__ import annotations

import email.parser
import logging
import socket
import time
from collections.abc import Callable, Iterable
from http import client
from typing import Any

import gevent
import gevent.event
from gevent.pool import Pool
from gevent.pywsgi import OldMessage, WSGIHandler, WSGIServer

log = logging.getLogger(__name__)

HEADROOM = 0.1  # room made at the limit, as a fraction of it: evictions come in batches
JANITOR_SECONDS = 0.05  # how often the connection limit is looked at
BACKLOG = 2048

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
# http.client's limits on a header block, as parse_headers applies them
MAX_HEADER_LINE = 65536
MAX_HEADERS = 100


def read_headers(rfile: Any, *_: Any) -> Any:
    """A request's headers, as pywsgi's own parser gives them (an ``OldMessage``; its status
    "Line too long" makes pywsgi answer 400), parsed with ``headersonly``: the header block is
    all there is, so nothing is lost by not reading it as a multipart message."""
    lines = []
    while True:
        line = rfile.readline(MAX_HEADER_LINE + 1)
        if len(line) > MAX_HEADER_LINE:
            message = OldMessage()
            message.status = "Line too long"
            return message
        lines.append(line)
        if len(lines) > MAX_HEADERS:
            raise client.HTTPException(f"got more than {MAX_HEADERS} headers")
        if line in (b"\r\n", b"\n", b""):
            break
    block = b"".join(lines).decode("iso-8859-1")
    return email.parser.Parser(_class=OldMessage).parsestr(block, headersonly=True)


class GuardedHandler(WSGIHandler):  # type: ignore[misc]  # gevent ships no type hints for pywsgi
    """One client connection. ``phase``: idle (waiting for a request line), reading (its
    headers) or busy (the app runs or the answer is sent); ``since``: when that phase began."""

    phase = "idle"
    since = 0.0
    server: GuardedWSGIServer

    def handle(self) -> None:
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # a Unix socket, or already closed
        self.greenlet = gevent.getcurrent()
        self.server.connections[self] = None
        try:
            super().handle()
        finally:
            self.server.connections.pop(self, None)

    def MessageClass(self, *args: Any) -> Any:  # noqa: N802  # pywsgi's name
        return read_headers(*args)

    def log_request(self) -> None:
        """Nothing: pywsgi formats an access line for every request even with no log to write
        it to, and the app's request log says what each request did."""

    def read_requestline(self) -> str:
        self.phase, self.since = "idle", time.monotonic()
        line = ""
        with gevent.Timeout(self.server.idle_timeout, False):  # silent: "" closes the connection
            line = str(super().read_requestline() or "")
        self.phase, self.since = "reading", time.monotonic()
        return line

    def read_request(self, raw_requestline: str) -> Any:
        # An Exception (gevent.Timeout is a BaseException), so pywsgi answers 400 and closes.
        with gevent.Timeout(
            self.server.read_timeout, ValueError("the request headers did not arrive in time")
        ):
            result = super().read_request(raw_requestline)
        self.phase = "busy"
        return result

    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()
        environ["gevent.socket"] = self.socket
        return environ


class GuardedWSGIServer(WSGIServer):  # type: ignore[misc]
    def __init__(
        self,
        listener: tuple[str, int],
        app: WsgiApp,
        *,
        max_connections: int,
        idle_timeout: float,
        read_timeout: float,
        **kwargs: Any,
    ) -> None:
        self.connections: dict[GuardedHandler, None] = {}  # live connections, oldest first
        self.max_connections = max_connections
        self.idle_timeout, self.read_timeout = idle_timeout, read_timeout
        kwargs.setdefault("backlog", BACKLOG)
        super().__init__(listener, app, spawn=Pool(max_connections), handler_class=GuardedHandler, **kwargs)

    def start(self) -> None:
        super().start()
        self._janitor = gevent.spawn(self._make_room_forever)

    def _make_room_forever(self) -> None:
        room = max(1, int(self.max_connections * HEADROOM))
        while True:
            gevent.sleep(JANITOR_SECONDS)
            if self.pool.free_count() > 0:
                continue
            waiting = sorted(
                (h for h in list(self.connections) if h.phase != "busy"),
                key=lambda h: (h.phase != "idle", h.since),
            )
            for handler in waiting[:room]:
                handler.greenlet.kill(block=False)
            if waiting:
                log.warning(
                    "at the connection limit: closed %d idle or slow connection(s) for new ones",
                    len(waiting[:room]),
                )

    def in_flight(self) -> int:
        """Connections with a request being read, handled or answered; idle ones don't count."""
        return sum(1 for handler in list(self.connections) if handler.phase != "idle")

    def graceful_stop(self, drain_seconds: float, end_waits: Callable[[], None] | None = None) -> None:
        """Stop listening, close idle connections, end the long waits with ``end_waits``, give
        what is in flight ``drain_seconds``."""
        self._janitor.kill(block=False)
        self.close()  # the listening socket only: new connections are refused from now on
        if end_waits:
            end_waits()
        give_up = time.monotonic() + drain_seconds
        log.info("stopped listening; finishing %d request(s) in flight", self.in_flight())
        while self.connections and time.monotonic() < give_up:
            for handler in list(self.connections):
                if handler.phase == "idle":
                    handler.greenlet.kill(block=False)
            gevent.sleep(0.1)
        if self.in_flight():
            log.warning(
                "%d request(s) still in flight after %.0f s; closing them", self.in_flight(), drain_seconds
            )
        self.stop(timeout=0)


def serve(
    app: WsgiApp,
    *,
    host: str,
    port: int,
    max_connections: int,
    idle_timeout: float,
    read_timeout: float,
    drain_seconds: float,
    stop: gevent.event.Event,
    end_waits: Callable[[], None] | None = None,
) -> None:
    """Serve ``app`` until ``stop`` is set, then stop gracefully (long waits ended by ``end_waits``)."""
    server = GuardedWSGIServer(
        (host, port),
        app,
        max_connections=max_connections,
        idle_timeout=idle_timeout,
        read_timeout=read_timeout,
        log=None,  # the app's request log says what each request did
        error_log=logging.getLogger("gevent.pywsgi"),
    )
    server.start()
    log.info("Serving HTTP on http://%s:%s", host, server.server_port)
    stop.wait()
    server.graceful_stop(drain_seconds, end_waits)
