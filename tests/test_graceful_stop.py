"""`python run_keras_server.py` stops gracefully: it stops listening, answers what is in flight, exits.

(gunicorn's graceful stop and the worker's are tested in test_scale_out.py.)
"""

from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import redis
import requests

from harness.launch import GUNICORN, on_queue, queue_env
from harness.processes import ServerProcess, free_port
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


@pytest.mark.parametrize("server", ["one-process", "gunicorn"])
def test_a_stopping_server_answers_long_polls_and_ends_event_streams_at_once(
    server, redis_server, colour_model, tmp_path
):
    """A 30 s long-poll gets the job's state and an event stream ends cleanly as soon as the
    server stops listening, instead of being cut when the drain runs out."""
    client = redis.Redis.from_url(redis_server.url)
    worker = LiveServer(
        *on_queue("worker", redis_server.url, QUEUE, *colour_model_args(colour_model)),
        log_path=tmp_path / "worker.log",
        ready_path=None,
    ).start()
    if server == "gunicorn":
        port = free_port()
        env = queue_env(redis_server.url, QUEUE, PORT=str(port), WEB_CONCURRENCY="1")
        web: ServerProcess = ServerProcess(
            GUNICORN, port, env=env, log_path=tmp_path / "web.log", name="gunicorn"
        )
    else:
        web = LiveServer(*on_queue("web", redis_server.url, QUEUE), log_path=tmp_path / "web.log")
    try:
        web.start()
        os.kill(worker.pid, signal.SIGSTOP)  # nothing computes the job: both waits would last 30 s
        files = {"image": ("i.png", colour_image("red"))}
        job = requests.post(web.url + "/jobs", files=files, timeout=10).json()["id"]
        blocked_before = int(client.info("clients")["blocked_clients"])
        with ThreadPoolExecutor(2) as pool:
            poll = pool.submit(requests.get, f"{web.url}/jobs/{job}?wait=30", timeout=60)

            def stream() -> list[str]:
                with requests.get(f"{web.url}/jobs/{job}/events", stream=True, timeout=60) as response:
                    return list(response.iter_lines(decode_unicode=True))

            events = pool.submit(stream)
            wait_until(
                lambda: int(client.info("clients")["blocked_clients"]) >= blocked_before + 2,
                20,
                "the long-poll and the event stream to wait in Redis",
            )
            stopped = time.monotonic()
            os.kill(web.pid, signal.SIGTERM)
            answer = poll.result()
            polled_in = time.monotonic() - stopped
            lines = events.result()
            streamed_in = time.monotonic() - stopped
        print(
            f"\nafter SIGTERM: long-poll answered in {polled_in:.2f} s, "
            f"event stream ended in {streamed_in:.2f} s"
        )
        assert answer.status_code == 200 and answer.json()["status"] == "queued"
        assert lines and lines[0] == "retry: 2000"  # a whole, cleanly ended stream
        assert polled_in < 10 and streamed_in < 10, "cut at the end of the drain, not ended at once"
        assert web.wait(timeout=15) == 0
    finally:
        os.kill(worker.pid, signal.SIGCONT)
        web.stop()
        worker.stop()


def test_the_one_process_mode_is_one_process_tree(redis_server, colour_model, tmp_path):
    """`python run_keras_server.py` runs its model worker as a child: a stop signal to the parent
    stops both (the worker signs off); a parent killed outright takes its worker with it."""
    for stop_signal in (signal.SIGINT, signal.SIGKILL):
        server = LiveServer(
            *on_queue(None, redis_server.url, QUEUE, *colour_model_args(colour_model)),
            log_path=tmp_path / f"all-{stop_signal}.log",
        ).start()
        try:
            [worker] = psutil.Process(server.pid).children()
            assert "--role" in worker.cmdline() and "worker" in worker.cmdline()
            # A terminal's Ctrl-C reaches the parent only: the worker computes what is in flight
            # while the web side drains, and is stopped after it.
            assert os.getpgid(worker.pid) != os.getpgid(server.pid)
            assert server.predict(colour_image("red")).json()["predictions"][0]["label"] == "red"
            os.kill(server.pid, stop_signal)
            code = server.wait(timeout=30)
            assert code == (0 if stop_signal == signal.SIGINT else -signal.SIGKILL)
            assert worker.wait(timeout=30) is not None or not worker.is_running()
            if stop_signal == signal.SIGINT:
                assert re.search(r"worker \S+ stopped", server.log())  # signed off: a graceful stop
        finally:
            server.stop()
