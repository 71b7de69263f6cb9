"""The tree is the architecture: the tiers import one way, and the README's code map names every
module of the service."""

from __future__ import annotations

import ast
import re

import pytest

from .support import ROOT

SERVING = ROOT / "serving"
# What each part of the service may import of the others (besides its own modules and the bottom
# layer: serving.settings, serving.images, serving.child_process, serving.tracing, serving.logs).
ALLOWED = {
    "web": {"queue", "tenants"},
    "worker": {"queue", "models"},
    "queue": set(),
    "tenants": {"queue"},
    "models": set(),
    "servers": set(),
    "bottom": set(),
}
BOTTOM = {"settings", "images", "child_process", "tracing", "logs"}
RUNTIMES = ("tensorflow", "keras", "openvino", "nncf")


def part(module: str) -> str | None:
    """The part of the service a dotted module name belongs to (None: not the service's)."""
    parts = module.split(".")
    if parts[0] != "serving" or len(parts) == 1:
        return None
    if parts[1] in BOTTOM:
        return "bottom"
    return parts[1] if parts[1] in ALLOWED else "cli"


def imports(path) -> list[str]:
    """Every module a file imports, at any depth (lazy imports inside functions included)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.append(".".join([*base, node.module] if node.module else base))
            else:
                found.append(node.module or "")
    return found


def service_modules():
    return sorted(path for path in SERVING.rglob("*.py") if "__pycache__" not in path.parts)


@pytest.mark.parametrize("path", service_modules(), ids=lambda path: str(path.relative_to(ROOT)))
def test_each_part_imports_only_what_it_may(path):
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    mine = part(module)
    if mine == "cli":
        return  # serving/cli.py starts every role
    for imported in imports(path):
        theirs = part(imported)
        if theirs is None or theirs in (mine, "bottom"):
            assert mine not in ("web", "queue") or not imported.startswith(RUNTIMES), (
                f"{module} imports the model runtime {imported}"
            )
            continue
        assert theirs in ALLOWED[mine], f"{module} ({mine}) imports {imported} ({theirs})"


def test_the_web_tier_loads_without_a_model_runtime():
    """What a web server imports pulls in no TensorFlow, Keras or OpenVINO (the web install has none)."""
    import subprocess
    import sys

    script = (
        "import sys, serving.web.app, serving.servers.gevent_server, serving.cli; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {RUNTIMES!r}))"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_readme_code_map_names_every_module():
    readme = (ROOT / "README.md").read_text()
    code_map = readme[readme.index("Code map.") : readme.index("## Tests")]
    named = set()
    for cell in re.findall(r"^\| ([^|]+) \|", code_map, re.MULTILINE):
        folder = ""
        for path in re.findall(r"`([\w./-]+)`", cell):
            if path.startswith("serving/"):
                folder = path.rsplit("/", 1)[0]
            elif "/" in path and folder:  # `routes/jobs.py` after `serving/web/routes/api.py`
                path = folder.rsplit("/", 1)[0] + "/" + path
            named.add(path)
    modules = {str(path.relative_to(ROOT)) for path in service_modules() if path.name != "__init__.py"} | {
        "serving/models/__init__.py"
    }
    assert sorted(modules - named) == [], "modules the README's code map leaves out"
    assert sorted(p for p in named if p.startswith("serving/") and not (ROOT / p).exists()) == []
