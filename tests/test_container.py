"""What the container runs, run here (no Docker daemon on these machines): deploy/install.sh into
a fresh virtualenv, then every role of deploy/entrypoint.sh from it, and the health check."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import psutil
import pytest
import requests

from harness.launch import on_queue
from harness.processes import ServerProcess, free_port, wait_until
from serving.queue.embedded import EmbeddedRedis

from .support import ROOT, LiveServer, colour_image, colour_model_args

pytestmark = pytest.mark.slow  # installs every pinned requirement into a new virtualenv


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    path = tmp_path_factory.mktemp("image") / "venv"
    out = subprocess.run(
        ["sh", str(ROOT / "deploy" / "install.sh"), str(path)], capture_output=True, text=True, timeout=1200
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"installed into {path}" in out.stdout
    frozen = subprocess.run(
        [str(path / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True, text=True
    )
    pinned = pins("requirements.txt")
    installed = {canonical(line) for line in frozen.stdout.splitlines()}
    missing = [pin for pin in pinned if canonical(pin) not in installed]
    assert missing == [], "the image would not have the pinned versions"
    assert not any(line.startswith(("pytest", "ruff", "selenium")) for line in installed)  # no test tools
    return path


def pins(name: str) -> list[str]:
    """The name==version lines of a requirements file and the files it includes with -r."""
    found = []
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            found += pins(line[3:].strip())
        elif "==" in line:
            found.append(line)
    return found


def canonical(requirement: str) -> str:
    """name==version with the name as pip compares names (PEP 503), extras left out."""
    name, _, version = requirement.partition("==")
    return re.sub(r"[-_.]+", "-", name.split("[")[0]).lower() + "==" + version


def container_env(venv, **settings: str) -> dict:
    """The image's environment: its venv first on PATH, settings as environment variables."""
    return {
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
        "HOME": os.environ.get("HOME", "/tmp"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
        **settings,
    }


def mapped_files(pid: int) -> set[str]:
    """Files a process and its children have mapped: the interpreter and the libraries they loaded."""
    root = psutil.Process(pid)
    paths = set()
    for process in [root, *root.children(recursive=True)]:
        paths |= {os.path.realpath(m.path) for m in process.memory_maps() if m.path.startswith("/")}
    return paths


def test_every_role_runs_from_the_installed_environment(venv, colour_model, tmp_path):
    redis = EmbeddedRedis(port=free_port()).start()
    web_port, all_port = free_port(), free_port()
    common = {"REDIS_URL": redis.url, "QUEUE_NAME": "containerq", "MODEL_CACHE": str(tmp_path / "cache")}
    model_flags = list(colour_model_args(colour_model))
    entrypoint = ["sh", str(ROOT / "deploy" / "entrypoint.sh")]
    web = ServerProcess(
        [*entrypoint, "--role", "web"],
        web_port,
        ready_path="/healthz",
        name="web",
        env=container_env(venv, PORT=str(web_port), WEB_CONCURRENCY="1", **common),
        log_path=tmp_path / "web.log",
    )
    worker = ServerProcess(
        [*entrypoint, "--role", "worker", *model_flags],
        0,
        ready_path=None,
        name="worker",
        env=container_env(venv, **common),
        log_path=tmp_path / "worker.log",
    )
    everything = ServerProcess(
        [*entrypoint, "--role", "all", *model_flags, "--queue-name", "containerq-all"],
        all_port,
        env=container_env(venv, PORT=str(all_port), **common),
        log_path=tmp_path / "all.log",
        name="all",
    )
    try:
        with web.start(), worker.start(), everything.start():
            wait_until(
                lambda: requests.get(web.url + "/readyz", timeout=5).status_code == 200,
                120,
                "the worker behind gunicorn",
                worker.check_alive,
            )
            for url in (web.url, everything.url):
                response = requests.post(
                    url + "/predict", files={"image": ("b.png", colour_image("blue"))}, timeout=30
                )
                assert response.status_code == 200 and response.json()["predictions"][0]["label"] == "blue"
            assert "gunicorn" in web.log() and "Booting worker" in web.log()
            for process in (web, worker, everything):
                loaded = mapped_files(process.pid)
                assert any(path.startswith(os.path.realpath(venv) + "/") for path in loaded), process.name
                # The test's own virtualenv played no part: none of its libraries is loaded.
                ours = os.path.realpath(sys.prefix) + "/"
                if sys.prefix != sys.base_prefix:
                    assert not [path for path in loaded if path.startswith(ours)], process.name
            for role, port in (("web", web_port), ("worker", 0), ("all", all_port)):
                check = subprocess.run(
                    [str(venv / "bin" / "python"), str(ROOT / "deploy" / "healthcheck.py")],
                    env={**container_env(venv), "ROLE": role, "PORT": str(port)},
                    timeout=30,
                )
                assert check.returncode == 0, role
        down = subprocess.run(
            [str(venv / "bin" / "python"), str(ROOT / "deploy" / "healthcheck.py")],
            env={**container_env(venv), "ROLE": "web", "PORT": str(web_port)},
            timeout=30,
        )
        assert down.returncode == 1  # the web server is gone: unhealthy
    finally:
        redis.stop()
    unknown = subprocess.run([*entrypoint, "--role", "chef"], capture_output=True, text=True, timeout=30)
    assert unknown.returncode == 2 and "unknown role 'chef'" in unknown.stderr


def test_the_web_install_has_no_model_runtime_and_serves(colour_model, tmp_path):
    """`pip install .[web]` into a fresh virtualenv: no TensorFlow, no OpenVINO, and a web server
    started from it (outside the repository) answers /predict with a worker of the full install."""
    venv = tmp_path / "web-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    source = tmp_path / "source"  # a copy of the tracked tree: pip builds in place and leaves build/
    source.mkdir()
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in tracked.stdout.splitlines():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{source}[web]"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    frozen = subprocess.run([python, "-m", "pip", "freeze"], capture_output=True, text=True).stdout.lower()
    names = {re.split(r"[=@ ]", line, maxsplit=1)[0] for line in frozen.splitlines()}
    for runtime in ("tensorflow", "tensorflow-cpu", "openvino", "keras", "h5py"):
        assert runtime not in names, f"the web install pulled in {runtime}"
    installed = {canonical(line) for line in frozen.splitlines()}
    # pyproject's ranges, not the pins, decide the versions: every pinned package is there
    installed_names = {line.split("==")[0] for line in installed}
    assert [
        pin for pin in pins("requirements-web.txt") if canonical(pin).split("==")[0] not in installed_names
    ] == []
    redis = EmbeddedRedis(port=free_port()).start()
    port = free_port()
    outside = tmp_path / "elsewhere"  # not the repository: the installed package serves
    outside.mkdir()
    web = ServerProcess(
        [
            str(venv / "bin" / "keras-redis-server"),
            *on_queue("web", redis.url, "webinstallq"),
            "--port",
            str(port),
        ],
        port,
        ready_path="/healthz",
        cwd=outside,
        env={"PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "PYTHONPATH": ""},
        log_path=tmp_path / "web.log",
        name="web-install",
    )
    worker = LiveServer(
        *on_queue("worker", redis.url, "webinstallq", *colour_model_args(colour_model)),
        ready_path=None,
        log_path=tmp_path / "worker.log",
    )
    try:
        with web.start(), worker.start():
            wait_until(
                lambda: requests.get(web.url + "/readyz", timeout=5).status_code == 200, 120, "the worker"
            )
            response = requests.post(
                web.url + "/predict", files={"image": ("r.png", colour_image("red"))}, timeout=30
            )
            assert response.status_code == 200 and response.json()["predictions"][0]["label"] == "red"
    finally:
        redis.stop()
