"""The container's health check: GET /healthz for the roles that serve HTTP; a worker, which
serves none, is healthy while its process runs (Kubernetes and compose watch its heartbeat
through /readyz of the web tier)."""

import os
import sys
import urllib.request

if os.environ.get("ROLE", "all") == "worker":
    sys.exit(0)
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/healthz", timeout=3):
        sys.exit(0)
except OSError:
    sys.exit(1)
