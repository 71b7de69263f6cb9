"""Waitress, guarded against clients that open connections and do nothing with them.

Waitress reads whole requests in its event loop before a thread runs the app, so a slow client
costs a connection, never a thread. What it lacks: it stops accepting at its connection limit
(a few hundred idle sockets lock everyone out), drops an idle connection only after
``channel_timeout`` of silence (a byte now and then resets it), and bounds nothing about how long
a request may take to arrive. The guard adds:

- at the connection limit, the connections idle longest (then the slowest partial requests)
  are closed to make room, so new clients are always accepted;
- a request's headers and body must arrive within ``read_timeout`` of its first byte;
- idle connections close after ``idle_timeout``, checked every second.
"""

from __future__ import annotations

import logging
import time
from typing import cast

import orjson
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import BaseWSGIServer
from waitress.task import ErrorTask

log = logging.getLogger(__name__)

HEADROOM = 0.05  # room made at the limit, as a fraction of it: evictions come in batches


class JsonErrorTask(ErrorTask):
    """Waitress's own errors (bad request line, body far too large) in the API's JSON shape."""

    def execute(self) -> None:
        # The stubs call ``request`` the Error; it is the parser that failed, holding the Error.
        error = cast(HTTPRequestParser, self.request).error
        assert error is not None  # waitress makes an ErrorTask only for a request with an error
        body = orjson.dumps({"success": False, "error": f"{error.reason}: {error.body}."})
        self.status = f"{error.code} {error.reason}"
        cast(list[tuple[str, str]], self.response_headers).append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class GuardedChannel(HTTPChannel):
    """A connection that remembers when its current request began to arrive."""

    error_task_class = JsonErrorTask
    request_started: float | None = None

    def received(self, data: bytes) -> bool:
        if data and self.request is None:
            self.request_started = time.monotonic()
        try:
            return super().received(data)
        finally:
            if self.request is None:  # no request half-read
                self.request_started = None

    @property
    def busy(self) -> bool:
        """Running a request or sending its answer: never closed by the guard."""
        return bool(self.requests or self.total_outbufs_len)


class ConnectionGuard:
    """Mixed into waitress's listening server (see ``guard``)."""

    # The listening server's, as this mixin sees them.
    read_timeout: float
    active_channels: dict[int, GuardedChannel]  # ``guard`` makes every channel one
    adj: Adjustments
    accepting: bool
    _map: dict[int, object]

    def maintenance(self, now: float) -> None:
        # A mixin: the server class comes after it in the MRO, so mypy sees no super() method.
        super().maintenance(now)  # type: ignore[misc]  # idle past channel_timeout
        too_old = time.monotonic() - self.read_timeout
        for channel in list(self.active_channels.values()):
            started = getattr(channel, "request_started", None)
            if started is not None and started < too_old and not channel.busy:
                channel.will_close = True

    def readable(self) -> bool:
        limit = self.adj.connection_limit
        if self.accepting and len(self._map) >= limit:
            self._make_room(len(self._map) - limit + max(1, int(limit * HEADROOM)))
        readable: bool = super().readable()  # type: ignore[misc]  # as in maintenance
        return readable

    def _make_room(self, count: int) -> None:
        """Close ``count`` connections: idle ones first, longest idle first; then partial requests,
        oldest first. Connections running a request are never touched."""
        channels = [c for c in self.active_channels.values() if isinstance(c, GuardedChannel) and not c.busy]
        idle = sorted((c for c in channels if c.request_started is None), key=lambda c: c.last_activity)
        partial = sorted(
            (c for c in channels if c.request_started is not None), key=lambda c: c.request_started or 0.0
        )
        closed = 0
        for channel in (idle + partial)[:count]:
            channel.handle_close()
            closed += 1
        if closed:
            log.warning("at the connection limit: closed %d idle or slow connection(s) for new ones", closed)


def guard(listener: BaseWSGIServer, read_timeout: float) -> None:
    """Give a waitress listener the guard and its channels the request clock."""
    listener.__class__ = type(f"Guarded{type(listener).__name__}", (ConnectionGuard, type(listener)), {})
    cast(ConnectionGuard, listener).read_timeout = read_timeout
    listener.channel_class = GuardedChannel
