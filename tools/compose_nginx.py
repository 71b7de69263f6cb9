"""Write deploy/compose/nginx.conf from deploy/nginx.conf: the same site, with the compose
services as upstreams and a listener on the container's own network. tests/test_deploy.py checks
that the two stay in step.

    python tools/compose_nginx.py
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "deploy" / "nginx.conf"
TARGET = ROOT / "deploy" / "compose" / "nginx.conf"
UPSTREAMS = ("web1:8000", "web2:8000")
HEADER = "# Generated from deploy/nginx.conf by tools/compose_nginx.py for compose.yaml: edit that file.\n"


def compose_site(site: str) -> str:
    servers = "".join(f"    server {address} max_fails=3 fail_timeout=5s;\n" for address in UPSTREAMS)
    site, count = re.subn(r"(    server 127\.0\.0\.1:\d+ [^\n]*\n)+", servers, site)
    assert count == 1, "deploy/nginx.conf: expected one block of upstream server lines"
    site, count = re.subn(r"listen 127\.0\.0\.1:8080;", "listen 8080;", site)
    assert count == 1, "deploy/nginx.conf: expected 'listen 127.0.0.1:8080;'"
    return HEADER + site


def main() -> None:
    TARGET.write_text(compose_site(SOURCE.read_text()))
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
