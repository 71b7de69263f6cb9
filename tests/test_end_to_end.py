"""The real server (child process, gevent.pywsgi, real redis-server) under concurrent clients."""

import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests

from .support import COLOURS, ROOT, colour_image, leftover_keys

pytestmark = pytest.mark.slow  # starts servers, browsers or full-size models

FORMATS = [
    ("PNG", "RGB"),
    ("JPEG", "RGB"),
    ("GIF", "P"),
    ("WEBP", "RGB"),
    ("BMP", "RGB"),
    ("PNG", "RGBA"),
    ("TIFF", "CMYK"),
    ("JPEG", "CMYK"),
]


@pytest.fixture(scope="module")
def server(serve):
    return serve("--batch-size", "16", "--max-upload-bytes", "500000", "--web-threads", "48")


def simple_request(server, *args: str) -> subprocess.CompletedProcess:
    """Run the README's client against ``server``."""
    command = [sys.executable, str(ROOT / "simple_request.py"), *args, "--url", server.url + "/predict"]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def top_probability(server, colour: str) -> float:
    """The server's top probability for ``colour_image(colour)``, asked for directly (the colour
    model is deterministic, so the client's printout must show the same number)."""
    body = server.predict(colour_image(colour)).json()
    assert body["predictions"][0]["label"] == colour
    return body["predictions"][0]["probability"]


def test_concurrent_clients_each_get_their_own_answer(server, redis_server):
    rng = random.Random(7)
    cases = []
    for i in range(240):
        colour = rng.choice(list(COLOURS))
        fmt, mode = FORMATS[i % len(FORMATS)]
        size = (rng.randint(20, 300), rng.randint(20, 300))
        cases.append((colour, colour_image(colour, size=size, fmt=fmt, mode=mode, seed=i), f"img{i}.{fmt}"))

    def send(case):
        colour, data, name = case
        with requests.Session() as session:
            response = session.post(server.url + "/predict", files={"image": (name, data)}, timeout=60)
        return colour, response.status_code, response.json()

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(send, cases))

    assert [status for _, status, _ in results] == [200] * len(cases)
    wrong = [
        (colour, body["predictions"][0])
        for colour, _, body in results
        if body["predictions"][0]["label"] != colour
    ]
    assert wrong == []
    request_ids = {body["request_id"] for _, _, body in results}
    assert len(request_ids) == len(cases)  # none duplicated
    assert max(body["batch"]["size"] for _, _, body in results) > 1  # requests shared model calls
    assert leftover_keys(redis.Redis.from_url(redis_server.url), server.queue_name) == []


def test_oversized_upload_gets_json_413_through_the_real_server(server):
    response = server.predict(b"\0" * 600_000, name="huge.png")
    assert response.status_code == 413
    expected = "The upload is larger than the limit of 500000 bytes."
    assert response.json() == {"success": False, "error": expected}


def test_far_oversized_upload_is_still_json(server):
    response = server.predict(b"\0" * 2_500_000, name="huger.png")
    assert response.status_code == 413 and response.json()["success"] is False


def test_bad_input_through_the_real_server(server):
    response = server.predict(b"just text", name="text.jpg")
    assert response.status_code == 400 and "not an image" in response.json()["error"]
    assert requests.get(server.url + "/predict", timeout=5).status_code == 405


def test_simple_request_prints_ranked_labels(server, tmp_path):
    image = tmp_path / "green.png"
    image.write_bytes(colour_image("green"))
    out = simple_request(server, str(image))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "model: colour version 1" and lines[1].startswith("1. green: ")
    assert len(lines) == 4  # model line + 3 classes


def test_simple_request_reports_server_errors(server, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    out = simple_request(server, str(text))
    assert out.returncode == 1 and "error (400)" in out.stderr and "not an image" in out.stderr


def test_simple_request_sends_several_images_with_a_top_k(server, tmp_path):
    paths = []
    for colour in ("blue", "red"):
        path = tmp_path / f"{colour}.png"
        path.write_bytes(colour_image(colour))
        paths.append(str(path))
    out = simple_request(server, *paths, "--top-k", "1")
    assert out.returncode == 0, out.stderr
    blue, red = (top_probability(server, colour) for colour in ("blue", "red"))
    assert out.stdout.splitlines() == [
        "blue.png: model: colour version 1",
        f"1. blue: {blue:.4f}",
        "red.png: model: colour version 1",
        f"1. red: {red:.4f}",
    ]


def test_simple_request_async_submits_a_job_and_prints_its_answer(server, tmp_path):
    image = tmp_path / "green.png"
    image.write_bytes(colour_image("green"))
    out = simple_request(server, str(image), "--async")
    assert out.returncode == 0, out.stderr
    assert out.stderr.startswith("job ") and "1 image(s) queued" in out.stderr
    assert out.stdout.splitlines()[:2] == [
        "model: colour version 1",
        f"1. green: {top_probability(server, 'green'):.4f}",
    ]
