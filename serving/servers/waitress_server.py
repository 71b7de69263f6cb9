"""The HTTP server for `python run_keras_server.py`: waitress, with JSON errors of its own,
guarded against idle and slow connections (serving/connection_guard.py), and a graceful stop.

Waitress buffers a whole request body (spooling large ones to disk) before the app runs,
so the app answers oversized uploads with a JSON 413. Bodies far beyond the limit are
refused by waitress itself; its errors are rewritten to the same JSON shape.

Waitress has no graceful shutdown of its own, so this module runs its event loop: on a stop
request it closes the listening socket (a load balancer moves on to other servers) and keeps
the loop turning until the requests in flight are answered, or their time is up.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, create_server

from serving.servers.connection_guard import guard
from serving.settings import Settings

log = logging.getLogger(__name__)


class HttpServer:
    def __init__(self, app: Flask, settings: Settings) -> None:
        # Every socket waitress watches: listeners (two for a host like "localhost": IPv4 and
        # IPv6), client connections, and its wake-up pipe.
        self.sockets: dict[int, Any] = {}  # fileno: dispatcher (the stubs say socket)
        server = create_server(
            app,
            map=self.sockets,
            host=settings.host,
            port=settings.port,
            threads=settings.web_threads,
            max_request_body_size=settings.max_upload_bytes * 4,
            connection_limit=settings.max_connections,
            channel_timeout=settings.idle_timeout,
            cleanup_interval=1,  # idle and slow connections are looked at every second
            asyncore_use_poll=True,  # select() stops at 1024 sockets
            ident="keras-server",
        )
        self.adj, self.task_dispatcher = server.adj, server.task_dispatcher
        self.listeners = [item for item in self.sockets.values() if isinstance(item, BaseWSGIServer)]
        for listener in self.listeners:
            guard(listener, settings.read_timeout)
        self.drain_seconds = settings.request_lifetime  # the longest a request in flight can take
        self._stop_requested = False

    def request_stop(self) -> None:
        """Begin a graceful stop. Safe in a signal handler: a flag and a byte down waitress's
        wake-up pipe (no lock is taken when no callback is passed)."""
        self._stop_requested = True
        self.listeners[0].pull_trigger()

    def run(self) -> None:
        """Serve until ``request_stop``, then drain; returns when the requests in flight are done."""
        for listener in self.listeners:
            # effective_host and effective_port are set in waitress's __init__; the stubs lack them.
            host, port = listener.effective_host, listener.effective_port  # type: ignore[attr-defined]
            log.info("Serving HTTP on http://%s:%s", host, port)
        while not self._stop_requested:
            self._turn_loop()
        self._drain()

    def _turn_loop(self) -> None:
        wasyncore.loop(
            timeout=self.adj.asyncore_loop_timeout,
            map=self.sockets,
            use_poll=self.adj.asyncore_use_poll,
            count=1,
        )

    def _in_flight(self) -> int:
        """Connections with a request being read, handled or sent; idle kept-alive ones don't count."""
        return sum(
            1
            for item in list(self.sockets.values())
            if isinstance(item, HTTPChannel)
            and (item.requests or item.request is not None or item.total_outbufs_len)
        )

    def _drain(self) -> None:
        for listener in self.listeners:  # the listeners only: the wake-up pipe must stay
            wasyncore.dispatcher.close(listener)
        give_up = time.monotonic() + self.drain_seconds
        in_flight = self._in_flight()
        log.info("stopped listening; finishing %d request(s) in flight", in_flight)
        while in_flight and time.monotonic() < give_up:
            self._turn_loop()
            in_flight = self._in_flight()
        if in_flight:
            log.warning(
                "%d request(s) still in flight after %.0f s; closing them", in_flight, self.drain_seconds
            )
        self.task_dispatcher.shutdown(cancel_pending=True, timeout=1)
        wasyncore.close_all(self.sockets)
