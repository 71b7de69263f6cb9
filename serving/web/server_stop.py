"""A stopping server ends its long waits with an answer instead of being cut mid-wait.

    with ends_when_server_stops():
        queue.wait_job(...)          # ServerStopping is raised in here once the server stops

A long-poll then answers the job's state as it is, and an event stream ends cleanly so its
client reconnects (to another server) with Last-Event-ID; a /predict wait does not take part:
the model worker keeps answering while the server drains. The server calls ``end_waits`` when
it stops listening (serving/cli.py wires it to the one-process server's graceful stop).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import gevent

_waiting: set[Any] = set()  # greenlets inside ends_when_server_stops
_stopping = False


class ServerStopping(Exception):
    """The server is stopping: answer what there is now. An Exception redis-py never retries."""


def stopping() -> bool:
    return _stopping


@contextmanager
def ends_when_server_stops() -> Iterator[None]:
    if _stopping:
        raise ServerStopping()
    waiter = gevent.getcurrent()
    _waiting.add(waiter)
    try:
        yield
    finally:
        _waiting.discard(waiter)


def end_waits() -> None:
    """Every wait inside ``ends_when_server_stops`` ends now, and every later one at once."""
    global _stopping
    _stopping = True
    hub = gevent.get_hub()
    for waiter in list(_waiting):
        hub.loop.run_callback(waiter.throw, ServerStopping())
