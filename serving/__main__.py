"""``python -m serving`` and the ``keras-redis-server`` script: gevent's monkey-patching first
(serving/patching.py), then the command line (serving/cli.py)."""

from serving.patching import patch_unless_worker

patch_unless_worker()

import sys  # noqa: E402

from serving.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
