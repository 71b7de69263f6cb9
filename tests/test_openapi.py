"""/openapi.json matches the live server: schemathesis fuzzes it; each error status is provoked for real."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis
import requests
import schemathesis

from serving.models.classifier import Classifier
from serving.queue import RedisQueue
from serving.queue.messages import Heartbeat
from serving.worker.loop import ModelWorker, describe

from .support import TINY_INPUT, colour_image, leftover_keys, make_settings, pretend_worker

pytestmark = pytest.mark.slow  # starts servers, browsers or full-size models

UPLOAD_LIMIT = 300_000
CLIENT_TIMEOUT = 1.0  # of the web-only servers
FUZZ_EXAMPLES = 40  # per operation and phase: the whole run stays within seconds


@pytest.fixture(scope="module")
def server(serve):
    return serve("--max-upload-bytes", str(UPLOAD_LIMIT))


def _web_only(serve, queue_name: str):
    """A web server whose queue has no real model worker behind it."""
    return serve(
        "--role",
        "web",
        "--client-timeout",
        str(CLIENT_TIMEOUT),
        "--max-upload-bytes",
        str(UPLOAD_LIMIT),
        model=False,
        queue=queue_name,
        ready_path="/healthz",
    )


def _check_against_spec(server, path: str, method: str, response: requests.Response) -> None:
    operation = schemathesis.openapi.from_url(server.url + "/openapi.json")[path][method]
    assert str(response.status_code) in operation.definition.raw["responses"], response.status_code
    operation.validate_response(response)  # raises with the schema path on any mismatch
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    if response.status_code >= 400:
        assert body["success"] is False and body["error"].endswith(".")
    if response.status_code == 503:
        assert int(response.headers["Retry-After"]) >= 0


def test_schemathesis_finds_no_response_outside_the_spec(server, tmp_path):
    # positive_data_acceptance is left out: the spec cannot say "the bytes must be a real image",
    # so random bytes in a schema-valid request are rightly answered 400.
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(Path(__file__).with_name("schemathesis.toml")),
        "run",
        server.url + "/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        str(FUZZ_EXAMPLES),
        "--continue-on-failure",
        "--request-timeout",
        "20",
        "--generation-database",
        ":memory:",
    ]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert re.search(r"\d+ generated, \d+ passed", run.stdout) and " failed" not in run.stdout, run.stdout[
        -3000:
    ]


def test_success_and_client_errors_match_the_spec(server):
    ok = server.predict(colour_image("red"), headers={"X-Request-ID": "my-id-1"})
    assert ok.status_code == 200 and ok.headers["X-Request-ID"] == "my-id-1"
    _check_against_spec(server, "/predict", "POST", ok)
    assert ok.json()["timings_ms"]["total"] >= ok.json()["timings_ms"]["model"]

    for response, status in (
        (server.predict(b"plain text", name="photo.jpg"), 400),
        (requests.post(server.url + "/predict", json={"images": ["%%%"]}, timeout=10), 400),
        (
            requests.post(
                server.url + "/predict",
                data=b"not an image",
                headers={"Content-Type": "image/png"},
                timeout=10,
            ),
            400,
        ),
        (requests.post(server.url + "/predict", data={"picture": "x"}, timeout=10), 415),
        (requests.post(server.url + "/predict", data=b"raw bytes", timeout=10), 415),
    ):
        assert response.status_code == status, response.text
        _check_against_spec(server, "/predict", "POST", response)

    too_large = server.predict(b"\0" * (UPLOAD_LIMIT + 1))
    assert too_large.status_code == 413
    _check_against_spec(server, "/predict", "POST", too_large)

    wrong_method = requests.get(server.url + "/predict", timeout=10)
    assert wrong_method.status_code == 405 and "POST" in wrong_method.headers["Allow"]
    _check_against_spec(server, "/predict", "POST", wrong_method)

    for path in ("/healthz", "/readyz"):
        _check_against_spec(server, path, "GET", requests.get(server.url + path, timeout=10))


def test_no_worker_is_a_503_with_retry_after(serve):
    web = _web_only(serve, "noworkerq")
    response = web.predict(colour_image("red"))
    assert response.status_code == 503
    _check_against_spec(web, "/predict", "POST", response)
    _check_against_spec(web, "/readyz", "GET", requests.get(web.url + "/readyz", timeout=10))


class BrokenClassifier(Classifier):
    def __init__(self):
        super().__init__("broken", (TINY_INPUT, TINY_INPUT), ["red", "green", "blue"])

    def predict(self, batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("weights are corrupt")


def test_timeouts_and_model_failures_match_the_spec(redis_server, serve):
    queue = RedisQueue(redis.Redis.from_url(redis_server.url), "stuckq")
    # A worker that announced itself and then hung: requests time out (504) and are withdrawn.
    pretend_worker(
        queue.redis, "stuckq", "hung-worker", Heartbeat(describe(BrokenClassifier()), "h", 1, 8), ttl=60
    )
    web = _web_only(serve, "stuckq")
    worker = thread = None
    try:
        started = time.monotonic()
        timed_out = web.predict(colour_image("red"))
        waited = time.monotonic() - started
        assert timed_out.status_code == 504
        assert 0.9 * CLIENT_TIMEOUT <= waited < CLIENT_TIMEOUT + 2, waited  # the deadline, with a margin
        _check_against_spec(web, "/predict", "POST", timed_out)
        assert leftover_keys(queue.redis, "stuckq") == []

        queue.sign_off("hung-worker")
        worker = ModelWorker(queue, BrokenClassifier(), make_settings(batch_wait_ms=0))
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        failed = web.predict(colour_image("red"))
        assert failed.status_code == 500
        _check_against_spec(web, "/predict", "POST", failed)
        assert failed.json()["error"] == "The model failed on this request's batch."
    finally:
        if worker:
            worker.stop()
            thread.join(timeout=10)
