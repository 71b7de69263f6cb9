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

import orjson
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.task import ErrorTask

log = logging.getLogger(__name__)

HEADROOM = 0.05  # room made at the limit, as a fraction of it: evictions come in batches


class JsonErrorTask(ErrorTask):
    """Waitress's own errors (bad request line, body far too large) in the API's JSON shape."""

    def execute(self):
        error = self.request.error
        body = orjson.dumps({"success": False, "error": f"{error.reason}: {error.body}."})
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class GuardedChannel(HTTPChannel):
    """A connection that remembers when its current request began to arrive."""

    error_task_class = JsonErrorTask
    request_started: float | None = None

    def received(self, data):
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

    read_timeout: float
    active_channels: dict
    adj: object

    def maintenance(self, now):
        super().maintenance(now)  # type: ignore[misc]  # idle past channel_timeout
        too_old = time.monotonic() - self.read_timeout
        for channel in list(self.active_channels.values()):
            started = getattr(channel, "request_started", None)
            if started is not None and started < too_old and not channel.busy:
                channel.will_close = True

    def readable(self):
        limit = self.adj.connection_limit  # type: ignore[attr-defined]
        if self.accepting and len(self._map) >= limit:  # type: ignore[attr-defined]
            self._make_room(len(self._map) - limit + max(1, int(limit * HEADROOM)))  # type: ignore[attr-defined]
        return super().readable()  # type: ignore[misc]

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
    listener.read_timeout = read_timeout
    listener.channel_class = GuardedChannel
