"""Redis-queued, batching Keras image classification over HTTP: the entry point.

    python run_keras_server.py                 # web + model worker in one process
    python run_keras_server.py --role web      # HTTP only (or: gunicorn "run_keras_server:create_app()")
    python run_keras_server.py --role worker   # model worker only

Run with --help for every setting; each is also an environment variable (see settings.py). The
code lives in the ``serving`` package: serving/cli.py (roles), serving/web (the web tier, from
``create_app``), serving/worker (the model worker, from ``create_worker``), serving/queue (the
wire between them).
"""

if __name__ == "__main__":  # first: gunicorn's gevent worker patches on its own before importing this
    from serving.patching import patch_unless_worker

    patch_unless_worker()

import sys  # noqa: E402

from serving.cli import main  # noqa: E402
from serving.web.app import create_app  # noqa: E402
from serving.worker.factory import create_worker  # noqa: E402

__all__ = ["create_app", "create_worker", "main"]

if __name__ == "__main__":
    sys.exit(main())
