#!/bin/sh
# Install the service into a virtual environment: the one set of install steps, which the
# Dockerfile runs and CI tests (tests/test_container.py).
#
#   sh deploy/install.sh [VENV]        # default /opt/venv
#
# Only the pinned serving requirements go in (requirements.txt): no test tools, no compilers.
set -eu
venv="${1:-/opt/venv}"
root="$(cd "$(dirname "$0")/.." && pwd)"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/requirements.txt"
# Fail here, not at the first request, if a pinned package does not import on this platform.
"$venv/bin/python" -c "import flask, gunicorn, msgpack, numpy, openvino, PIL, redis, tensorflow, waitress"
echo "installed into $venv"
