"""gevent's monkey-patching, the first thing a process that serves HTTP does (before anything
imports socket, ssl or redis): every connection is then a greenlet. A model worker process
(``--role worker``) is left unpatched: its loop is plain blocking code, and measured faster so.

Imports nothing of the service, so it can run before anything else is imported.
"""

from __future__ import annotations

import os
import sys


def role_of(argv: list[str]) -> str:
    """The role ``--role`` (or ROLE) asks for, read the way serving/settings.py reads it."""
    role = os.environ.get("ROLE", "all")
    for i, arg in enumerate(argv):
        if arg == "--role" and i + 1 < len(argv):
            role = argv[i + 1]
        elif arg.startswith("--role="):
            role = arg.split("=", 1)[1]
    return role


def patch_unless_worker(argv: list[str] | None = None) -> None:
    if role_of(sys.argv[1:] if argv is None else argv) != "worker":
        from gevent import monkey

        monkey.patch_all()
