"""`python run_keras_server.py` stops gracefully: it stops listening, answers what is in flight, exits.

(gunicorn's graceful stop and the worker's are tested in test_scale_out.py.)
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests

from harness.launch import on_queue
from serving.queue.keys import QueueKeys

from .support import (
    COLOURS,
    LiveServer,
    colour_image,
    colour_model_args,
    colour_queue,
    leftover_keys,
    wait_until,
)

pytestmark = pytest.mark.slow  # starts servers, browsers or full-size models

QUEUE = "drainq"
IN_FLIGHT = 6


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_web_server_answers_requests_in_flight_after_a_stop_signal(
    stop_signal, redis_server, colour_model, tmp_path
):
    client = redis.Redis.from_url(redis_server.url)
    client.delete(*client.keys(f"{QueueKeys(colour_queue(QUEUE)).tag}*") or ["-"])
    worker = LiveServer(
        *on_queue("worker", redis_server.url, QUEUE, *colour_model_args(colour_model)),
        log_path=tmp_path / "worker.log",
        ready_path=None,
    )
    worker.start()
    web = LiveServer(
        *on_queue("web", redis_server.url, QUEUE, "--client-timeout", "30"),
        log_path=tmp_path / "web.log",
    )
    try:
        web.start()  # ready: the worker has loaded its model and sent a heartbeat
        os.kill(worker.pid, signal.SIGSTOP)  # requests now wait in Redis for the worker
        colours = [list(COLOURS)[i % len(COLOURS)] for i in range(IN_FLIGHT)]
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            answers = [
                pool.submit(web.predict, colour_image(colour, seed=i)) for i, colour in enumerate(colours)
            ]
            wait_until(
                lambda: len(client.keys(f"{QueueKeys(colour_queue(QUEUE)).tag}:waiting:*")) == IN_FLIGHT,
                20,
                "requests in flight",
            )

            os.kill(web.pid, stop_signal)
            wait_until(lambda: "stopped listening" in web.log(), 10, "the web server to stop listening")
            with pytest.raises(requests.ConnectionError):  # new connections are refused while it drains
                requests.get(web.url + "/healthz", timeout=2)
            time.sleep(3)  # the answers are held back well beyond any short grace period
            assert web.alive(), "exited with requests in flight"

            os.kill(worker.pid, signal.SIGCONT)
            results = [answer.result() for answer in answers]
        assert [response.status_code for response in results] == [200] * IN_FLIGHT
        assert [response.json()["predictions"][0]["label"] for response in results] == colours
        assert web.wait(timeout=10) == 0
        assert f"finishing {IN_FLIGHT} request(s) in flight" in web.log()
    finally:
        os.kill(worker.pid, signal.SIGCONT)
        web.stop()
        worker.stop()
    assert leftover_keys(client, QUEUE) == []
