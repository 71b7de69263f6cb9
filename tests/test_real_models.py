"""ResNet50 and the bundled EfficientNet-Lite0 through the real server, with no network."""

import subprocess
import sys

import pytest
import requests

from serving.queue.embedded import DEFAULT_URL, answers

from .support import ROOT, TESTDATA, LiveServer

pytestmark = pytest.mark.slow  # starts servers, browsers or full-size models

needs_photos = pytest.mark.skipif(not TESTDATA.is_dir(), reason=f"test photos not found at {TESTDATA}")
OFFLINE = {"HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}  # no downloads


def test_resnet50_random_weights_end_to_end(tmp_path):
    """The one ResNet50 run of the suite: embedded Redis, real HTTP, simple_request.py."""
    image = tmp_path / "red.png"
    from .support import colour_image

    image.write_bytes(colour_image("red", size=(300, 200)))
    log = tmp_path / "server.log"
    server = LiveServer(
        "--model",
        "resnet50",
        "--weights",
        "none",
        "--batch-size",
        "4",
        env={"REDIS_URL": ""},
        log_path=log,
        ready_timeout=180,
    ).start()
    try:
        out = subprocess.run(
            [sys.executable, str(ROOT / "simple_request.py"), str(image), "--url", server.url + "/predict"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.stop()
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("model: resnet50 version 1 (") and "random weights" in lines[0]
    assert len(lines) == 6 and lines[1].startswith("1. ")
    if not answers(DEFAULT_URL):
        assert "started an embedded redis-server" in log.read_text()
    assert "random weights" in log.read_text()


@needs_photos
def test_offline_default_serves_the_bundled_model_and_gets_real_photos_right(tmp_path, redis_server):
    log = tmp_path / "server.log"
    server = LiveServer(
        "--redis-url",
        redis_server.url,
        "--queue-name",
        "photos",
        env={"KERAS_HOME": str(tmp_path / "empty-keras-cache"), "MODEL": "", **OFFLINE},
        log_path=log,
        ready_timeout=180,
    ).start()
    try:
        top = {}
        for photo in ("shuttle.jpg", "flower.jpg", "airdale.jpg"):
            with open(TESTDATA / photo, "rb") as handle:
                response = requests.post(
                    server.url + "/predict", files={"image": (photo, handle)}, timeout=60
                )
            assert response.status_code == 200, response.text
            assert response.json()["model"]["name"] == "efficientnet_lite0"
            top[photo] = [p["label"] for p in response.json()["predictions"]]
    finally:
        server.stop()
    assert top["shuttle.jpg"][0] == "space shuttle"
    assert top["flower.jpg"][0] == "daisy"
    assert "Airedale" in top["airdale.jpg"][:3]
    assert "Serving efficientnet_lite0: the bundled ImageNet model (offline)" in log.read_text()


def test_explicit_resnet50_fails_fast_offline(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run_keras_server.py"),
            "--role",
            "worker",
            "--model",
            "resnet50",
            "--redis-url",
            "redis://127.0.0.1:9/0",
        ],
        env={**OFFLINE, "KERAS_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert "use --model efficientnet_lite0 (bundled, offline)" in out.stderr
