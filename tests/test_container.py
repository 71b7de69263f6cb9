"""What the container runs, run here (no Docker daemon on these machines): deploy/install.sh into
a fresh virtualenv, then every role of deploy/entrypoint.sh from it, and the health check."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import requests

from harness.processes import ServerProcess, free_port, wait_until
from serving.queue.embedded import EmbeddedRedis

from .support import ROOT, colour_image, colour_model_args

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
    pinned = [
        line.split("#")[0].strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line
    ]
    installed = {canonical(line) for line in frozen.stdout.splitlines()}
    missing = [pin for pin in pinned if canonical(pin) not in installed]
    assert missing == [], "the image would not have the pinned versions"
    assert not any(line.startswith(("pytest", "ruff", "selenium")) for line in installed)  # no test tools
    return path


def canonical(requirement: str) -> str:
    """name==version with the name as pip compares names (PEP 503)."""
    name, _, version = requirement.partition("==")
    return re.sub(r"[-_.]+", "-", name).lower() + "==" + version


def container_env(venv, **settings: str) -> dict:
    """The image's environment: its venv first on PATH, settings as environment variables."""
    return {
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
        "HOME": os.environ.get("HOME", "/tmp"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
        **settings,
    }


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
    assert sys.executable  # the test process's own Python played no part above
