"""The web tier in-process against a real redis-server; the worker is absent or stalled."""

import io
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from run_keras_server import create_app
from serving.queue import RedisQueue
from serving.queue.keys import QueueKeys
from serving.queue.messages import Heartbeat, ModelInfo, Request
from serving.settings import load_settings

from .support import ROOT, colour_image, free_port, leftover_keys, pretend_worker, push_raw
from .support import queued as queued_in

Q = "webq"
CLIENT_TIMEOUT = 0.5
STALLED_WORKER = Heartbeat(ModelInfo("colour", (32, 32), 3), host="h", pid=1, batch_size=8)


def _app(redis_url, *flags):
    settings = load_settings(
        [
            "--redis-url",
            redis_url,
            "--queue-name",
            Q,
            "--client-timeout",
            str(CLIENT_TIMEOUT),
            "--max-upload-bytes",
            "200000",
            "--max-image-pixels",
            "1000000",
            *flags,
        ],
        environ={},
    )
    return create_app(settings)


@pytest.fixture
def stalled(redis_client):
    """A worker that sends heartbeats but never takes work."""
    pretend_worker(redis_client, Q, "stalled", STALLED_WORKER, ttl=30)
    return redis_client


@pytest.fixture
def client(redis_server, stalled):
    return _app(redis_server.url).test_client()


def _post(client, data, name="image.png"):
    return client.post(
        "/predict", data={"image": (io.BytesIO(data), name)}, content_type="multipart/form-data"
    )


def _png(size):
    buffer = io.BytesIO()
    Image.new("1", size).save(buffer, format="PNG")
    return buffer.getvalue()


def _truncated_jpeg():
    buffer = io.BytesIO()
    Image.effect_noise((120, 120), 60).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()[:1500]


@pytest.mark.parametrize(
    "data, name, message",
    [
        (b"", "empty.png", "empty"),
        (b"GIF89a? not really", "fake.gif", "not an image"),
        (b"plain text renamed", "notes.jpg", "not an image"),
        (_truncated_jpeg(), "cut.jpg", "could not be decoded"),
        (_png((3000, 2000)), "bomb.png", "3000x2000 pixels"),
    ],
)
def test_bad_images_get_400_and_leave_nothing_behind(client, stalled, data, name, message):
    response = _post(client, data, name)
    assert response.status_code == 400
    assert response.json["success"] is False and message in response.json["error"]
    assert leftover_keys(stalled, Q) == []


def test_missing_field_is_400(client):
    response = client.post(
        "/predict", data={"file": (io.BytesIO(b"x"), "x.png")}, content_type="multipart/form-data"
    )
    assert response.status_code == 400 and "'image'" in response.json["error"]
    assert client.post("/predict").status_code == 400


def test_oversized_body_is_413_json(client):
    response = _post(client, b"x" * 300_000)
    assert response.status_code == 413 and "200000 bytes" in response.json["error"]


def test_wrong_method_is_405_json(client):
    response = client.get("/predict")
    assert response.status_code == 405 and response.json["success"] is False


def test_unknown_path_is_404_json(client):
    response = client.get("/nowhere")
    assert response.status_code == 404 and response.json["success"] is False


def test_no_result_before_the_deadline_is_504_and_the_message_is_withdrawn(client, stalled):
    started = time.monotonic()
    response = _post(client, colour_image("red"))
    waited = time.monotonic() - started
    assert response.status_code == 504
    # The deadline is --client-timeout (0.5 s): not before it, and not long after (a generous margin).
    assert 0.9 * CLIENT_TIMEOUT <= waited < CLIENT_TIMEOUT + 2, waited
    assert "withdrawn" in response.json["error"] and response.json["request_id"]
    assert leftover_keys(stalled, Q) == []  # queue empty, no waiting marker


def test_full_queue_is_503_with_retry_after(redis_server, stalled):
    client = _app(redis_server.url, "--max-queue-length", "2").test_client()
    queued = [
        Request(f"queued-{i}", 0, np.zeros((32, 32, 3), np.uint8), 1, 0, 1e12).to_bytes() for i in (1, 2)
    ]
    refs = push_raw(RedisQueue(stalled, Q), "interactive", *queued)
    response = _post(client, colour_image("red"))
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert "busy" in response.json["error"]
    assert queued_in(RedisQueue(stalled, Q)) == refs
    assert len(stalled.keys(f"{QueueKeys(Q).tag}:image:*")) == 2  # the refused request's image went
    assert not stalled.keys(f"{QueueKeys(Q).tag}:waiting:*")


def test_no_worker_is_503_and_not_ready(redis_server, redis_client):
    client = _app(redis_server.url).test_client()
    response = _post(client, colour_image("red"))
    assert response.status_code == 503 and "No model worker" in response.json["error"]
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200


def test_ready_when_redis_answers_and_a_worker_beats(client):
    response = client.get("/readyz")
    assert response.status_code == 200 and response.json["workers"] == 1
    port = response.json["redis"]["primary"].rsplit(":", 1)[1]
    assert response.json["redis"] | {"primary": port} == {
        "primary": port,
        "via": "redis",
        "primary_changes": 0,
    }
    assert port != "" and int(port) > 0


def test_redis_down_is_503_at_once():
    client = _app(f"redis://127.0.0.1:{free_port()}/0").test_client()
    started = time.monotonic()
    response = _post(client, colour_image("red"))
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert "Redis" in response.json["error"]
    assert client.get("/readyz").status_code == 503
    assert time.monotonic() - started < 5  # a hang guard, not a performance figure


def test_web_tier_never_imports_tensorflow():
    """Web hosts need no TensorFlow: only model workers load models."""
    probe = (
        "import sys, run_keras_server; run_keras_server.create_app(); "
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "", "REDIS_URL": "redis://127.0.0.1:1/0"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_form_of_too_many_parts_is_413_naming_that_limit(client):
    fields = {f"field{i}": "x" for i in range(100)}  # a small body of many parts
    response = client.post("/predict", data=fields, content_type="multipart/form-data")
    assert response.status_code == 413
    assert "The form has more than 64 parts" in response.json["error"]


def test_help_reads_cleanly():
    out = subprocess.run(
        [sys.executable, str(ROOT / "run_keras_server.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    for leftover in ("%(", "{'", "(default: None)"):
        assert leftover not in out.stdout
    assert "--batch-size BATCH_SIZE" in out.stdout and "under 5 percent" in out.stdout
