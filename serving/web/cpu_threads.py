"""Native threads for a request's CPU-heavy steps (decoding and fitting its images), so a big
upload never stalls the event loop that every other connection of the process waits on.

Under gevent (both servers monkey-patch) the request's greenlet hands the work to one of
``--web-threads`` real OS threads (gevent's ThreadPool) and waits cooperatively: Pillow and
numpy release the GIL while they work, so the hub keeps answering /healthz and waking waiters.
More requests than threads queue for one, holding nothing but their greenlet; the decode
memory budget (serving/images.py) still bounds the pixels held at once, and its waits now
block a pool thread, never the hub. Unpatched (Flask's test client, a threaded server) the
request's own thread does the work.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import gevent
from gevent import monkey
from gevent.threadpool import ThreadPool

T = TypeVar("T")


class CpuThreads:
    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._pool: ThreadPool | None = None
        self._pid = 0
        self._creating = threading.Lock()

    def _threads(self) -> ThreadPool:
        # Made on first use in the process that serves: gunicorn forks its workers after
        # loading the app, and a pool belongs to the hub of the process that made it.
        if self._pool is None or self._pid != os.getpid():
            with self._creating:
                if self._pool is None or self._pid != os.getpid():
                    self._pool, self._pid = ThreadPool(self.size), os.getpid()
        return self._pool

    def run(self, work: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """``work(*args)`` on a pool thread, its result or exception returned here. Waits at most
        ``timeout`` seconds (then ``TimeoutError``): a request is answered even if its thread is
        stuck, though the thread is not freed."""
        if not monkey.is_module_patched("socket"):
            return work(*args)
        try:
            result: T = self._threads().spawn(work, *args).get(timeout=timeout)
        except gevent.Timeout:
            raise TimeoutError(f"no result within {timeout:g} s") from None
        return result
