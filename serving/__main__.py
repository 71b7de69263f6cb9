"""``python -m serving`` and the ``keras-redis-server`` script: gevent's monkey-patching first,
before anything imports socket, ssl or redis, then the command line (serving/cli.py)."""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from serving.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
