"""A child process that logs to a file and stops with SIGTERM, and a poll for it to get ready:
what the embedded Redis needs (and the test and benchmark harness builds on)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def wait_until(
    condition: Callable[[], T],
    timeout: float,
    what: str,
    check: Callable[[], None] | None = None,
    interval: float = 0.05,
) -> T:
    """Poll ``condition`` until it returns something truthy, which is returned.

    Only for watching another process from the outside (it starting, exiting, writing a key);
    ``check`` runs before each poll and may raise, e.g. when the watched process died.
    """
    give_up = time.monotonic() + timeout
    while True:
        if check:
            check()
        value = condition()
        if value:
            return value
        if time.monotonic() > give_up:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:g} s")
        time.sleep(interval)


def _terminate_when_parent_dies() -> Callable[[], None] | None:
    """What a child runs between fork and exec so the kernel sends it SIGTERM when its parent
    dies, even by SIGKILL (Linux only; None elsewhere). The signal comes when the thread that
    started the child ends, so only children started from a thread that lives as long as the
    process (the main thread) should ask for it."""
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork, not in the child
    parent = os.getpid()

    def ask() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the request took hold
            os._exit(1)

    return ask


class ChildProcess:
    """A child process whose output goes to a log file (or nowhere), stopped with SIGTERM.
    With ``dies_with_parent`` it is also stopped when its parent is killed (Linux)."""

    def __init__(
        self,
        args: Sequence[str | Path],
        *,
        name: str = "",
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        dies_with_parent: bool = False,
    ):
        self.args = [str(arg) for arg in args]
        self.dies_with_parent = dies_with_parent
        self.name = name or Path(self.args[0]).name
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None

    def start_inheriting_output(self, own_session: bool = False) -> ChildProcess:
        """Start it writing to this process's stdout and stderr (no log file); ``own_session``:
        out of the terminal's process group, so a Ctrl-C reaches only its parent."""
        self.popen = subprocess.Popen(
            self.args,
            cwd=self.cwd,
            env=self.env,
            preexec_fn=_terminate_when_parent_dies() if self.dies_with_parent else None,
            start_new_session=own_session,
        )
        return self

    def start(self) -> ChildProcess:
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log_path, "wb")  # noqa: SIM115 - the child keeps it; closed below
        try:
            self.popen = subprocess.Popen(
                self.args,
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_terminate_when_parent_dies() if self.dies_with_parent else None,
            )
        finally:
            if not isinstance(out, int):
                out.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self, tail: int | None = None) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace")
        return text[-tail:] if tail else text

    def check_alive(self) -> None:
        """Raise with the end of its log if the process has exited."""
        if not self.alive():
            code = self.popen.returncode if self.popen else None
            raise RuntimeError(f"{self.name} exited with {code}:\n{self.log(3000)}")

    def signal(self, signum: int) -> None:
        if self.popen is not None and self.alive():
            self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout=timeout)

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``. Returns the exit code."""
        if self.popen is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
