"""The model worker of the one-process mode (``--role all``) as a child process.

Run as a thread inside the monkey-patched web process, the worker was measured slower than on
its own: its Redis calls went through gevent's sockets on a second hub, and every answer
crossed the GIL between two busy threads. A child runs ``--role worker`` unpatched, exactly as
in the scaled-out layout, and stays one process tree with its parent:

- it dies with the parent, even one killed by SIGKILL (PR_SET_PDEATHSIG);
- a graceful stop reaches it as SIGTERM only after the web side has drained, so the requests
  in flight are still computed; it runs in a session of its own, so a Ctrl-C in the terminal
  reaches the parent alone, which stops it so (the batch in hand is answered first);
- if it exits on its own (the model does not load), the parent is told and stops too.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

import gevent

from serving.child_process import ChildProcess

log = logging.getLogger(__name__)


def worker_command(argv: Sequence[str], redis_url: str) -> list[str]:
    """The same command line as a worker on ``redis_url`` (the later flags win)."""
    return [sys.executable, "-m", "serving", *argv, "--role", "worker", "--redis-url", redis_url]


class WorkerChild:
    def __init__(self, argv: Sequence[str], redis_url: str) -> None:
        # Its output is the parent's (one terminal, one log); started from the main thread,
        # which lives as long as the process, so the parent-death signal is not sent early.
        self.process = ChildProcess(
            worker_command(argv, redis_url), name="model worker", dies_with_parent=True
        )
        self.exit_code: int | None = None
        self._stopping = False

    def start(self, on_exit: Callable[[], None]) -> WorkerChild:
        """Start it; ``on_exit`` runs (in a greenlet) if it exits before ``stop`` is called."""
        self.process.start_inheriting_output(own_session=True)
        gevent.spawn(self._watch, on_exit)
        return self

    def _watch(self, on_exit: Callable[[], None]) -> None:
        assert self.process.popen is not None
        code = self.process.popen.wait()  # gevent's subprocess: waits without blocking the hub
        if not self._stopping:
            self.exit_code = code
            log.error("the model worker exited with %s; stopping", code)
            on_exit()

    def stop(self, timeout: float) -> None:
        """SIGTERM (the batch in hand is answered), SIGKILL after ``timeout``."""
        self._stopping = True
        self.process.stop(timeout=timeout)
