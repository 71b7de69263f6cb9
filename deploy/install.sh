#!/bin/sh
# Install the service into a virtual environment: the one set of install steps, which the
# Dockerfile runs and CI tests (tests/test_container.py).
#
#   sh deploy/install.sh [VENV] [REQUIREMENTS]   # default /opt/venv, requirements.txt
#
# Only pinned serving requirements go in: requirements.txt for every role, requirements-web.txt
# for a web-only install (no TensorFlow, no OpenVINO). No test tools, no compilers.
set -eu
venv="${1:-/opt/venv}"
root="$(cd "$(dirname "$0")/.." && pwd)"
requirements="${2:-$root/requirements.txt}"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
# Fail here, not at the first request, if a pinned package does not import on this platform.
"$venv/bin/python" -c "import flask, gevent, gunicorn, msgpack, numpy, PIL, redis"
if grep -q '^tensorflow' "$requirements"; then
  "$venv/bin/python" -c "import openvino, tensorflow"
fi
echo "installed into $venv"
