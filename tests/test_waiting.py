"""Waiting costs nothing: a thousand long-polls on one web process (gevent), abandoned waits, a
30 s long-poll. Real servers on loopback; figures are printed, the bounds asserted are generous."""

from __future__ import annotations

import io
import json
import os
import selectors
import signal
import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import redis
import requests
from PIL import Image

from harness.launch import on_queue

from .support import LiveServer, colour_image, colour_model_args, wait_until

pytestmark = pytest.mark.slow  # starts servers, browsers or full-size models

WAITS = 1000


def open_long_polls(port: int, path: str, count: int) -> list[socket.socket]:
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(request)
        sockets.append(sock)
    return sockets


def read_all(sockets: list[socket.socket], seconds: float) -> dict[socket.socket, bytes]:
    """What each socket received until it has a whole answer head, within ``seconds``."""
    got = {sock: b"" for sock in sockets}
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        give_up = time.monotonic() + seconds
        pending = set(sockets)
        while pending and time.monotonic() < give_up:
            for key, _ in selector.select(timeout=0.5):
                sock = key.fileobj
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                got[sock] += data
                if not data or b"}" in got[sock]:  # the JSON body has arrived (or the socket closed)
                    selector.unregister(sock)
                    pending.discard(sock)
    return got


def healthz_latencies(url: str, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        started = time.monotonic()
        assert requests.get(url + "/healthz", timeout=5).status_code == 200
        latencies.append(time.monotonic() - started)
        time.sleep(0.01)
    return latencies


def redis_clients(client: redis.Redis) -> tuple[int, int]:
    info = client.info("clients")
    return int(info["connected_clients"]), int(info["blocked_clients"])


@pytest.fixture
def stack(redis_server, colour_model, tmp_path):
    """A web process (gevent) and a model worker on a queue of their own."""
    queue = "waitq"
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    worker = LiveServer(
        *on_queue("worker", redis_server.url, queue, *colour_model_args(colour_model)),
        log_path=tmp_path / "worker.log",
        ready_path=None,
    ).start()
    web = LiveServer(
        *on_queue("web", redis_server.url, queue, "--max-connections", str(WAITS + 200)),
        log_path=tmp_path / "web.log",
    )
    try:
        web.start()  # ready: the worker's heartbeat is in
        yield web, worker, client
    finally:
        os.kill(worker.pid, signal.SIGCONT)
        web.stop()
        worker.stop()


def submit_job(web: LiveServer) -> str:
    response = requests.post(web.url + "/jobs", files={"image": ("i.png", colour_image("red"))}, timeout=10)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_a_long_poll_ends_at_its_wait_with_the_jobs_state(stack):
    web, worker, _ = stack
    os.kill(worker.pid, signal.SIGSTOP)  # nothing computes the job
    job = submit_job(web)
    started = time.monotonic()
    response = requests.get(f"{web.url}/jobs/{job}?wait=30", timeout=60)
    took = time.monotonic() - started
    print(f"\nGET /jobs/<id>?wait=30 on a queued job: {response.status_code} after {took:.2f} s")
    assert response.status_code == 200 and response.json()["status"] == "queued"
    assert 29.5 < took < 32
    too_long = requests.get(f"{web.url}/jobs/{job}?wait=31", timeout=10)
    assert too_long.status_code == 400 and "up to 30" in too_long.json()["error"]


def test_a_thousand_long_polls_leave_health_checks_and_predict_answering(stack):
    web, worker, client = stack
    os.kill(worker.pid, signal.SIGSTOP)
    job = submit_job(web)
    process = psutil.Process(web.pid)
    rss_before = process.memory_info().rss
    polls = open_long_polls(web.port, f"/jobs/{job}?wait=30", WAITS)
    try:
        wait_until(lambda: redis_clients(client)[1] >= WAITS, 30, "every long-poll to block in Redis")
        rss_held = process.memory_info().rss
        latencies = sorted(healthz_latencies(web.url, 200))
        p50, p99 = statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]
        threads = process.num_threads()
        os.kill(worker.pid, signal.SIGCONT)
        started = time.monotonic()
        answer = web.predict(colour_image("green"))
        predict_seconds = time.monotonic() - started
        answers = read_all(polls, 30)
    finally:
        os.kill(worker.pid, signal.SIGCONT)
        for sock in polls:
            sock.close()
    done = sum(1 for data in answers.values() if b" 200 " in data[:20] and b'"status":"done"' in data)
    print(
        f"\n{WAITS} long-polls held by one web process ({threads} OS threads, "
        f"RSS +{(rss_held - rss_before) / 2**20:.0f} MB): /healthz p50 {p50 * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms; /predict {answer.status_code} "
        f"in {predict_seconds * 1000:.0f} ms; {done} long-polls then answered with the job done; "
        f"load {os.getloadavg()[0]:.1f}"
    )
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "green"
    assert p99 < 0.1
    assert done == WAITS


def test_abandoned_waits_leave_nothing_behind(stack):
    web, worker, client = stack
    os.kill(worker.pid, signal.SIGSTOP)
    job = submit_job(web)
    process = psutil.Process(web.pid)
    idle_clients, _ = redis_clients(client)
    idle_threads = process.num_threads()
    polls = open_long_polls(web.port, f"/jobs/{job}?wait=30", WAITS)
    wait_until(lambda: redis_clients(client)[1] >= WAITS, 30, "every long-poll to block in Redis")
    held_clients, held_blocked = redis_clients(client)
    for sock in polls:
        sock.close()
    closed = time.monotonic()
    wait_until(lambda: redis_clients(client)[1] == 0, 10, "the blocked calls to leave Redis")
    gone_after = time.monotonic() - closed
    time.sleep(max(0.0, 1 - gone_after))
    after_clients, after_blocked = redis_clients(client)
    connections = len(process.net_connections(kind="tcp"))
    print(
        f"\n{WAITS} long-polls abandoned at once: Redis clients {idle_clients} idle, {held_clients} "
        f"({held_blocked} blocked) held, {after_clients} ({after_blocked} blocked) 1 s after; every "
        f"blocked call gone in {gone_after:.2f} s; web process threads {idle_threads} -> "
        f"{process.num_threads()}, its TCP connections {connections}"
    )
    # Gone long before their 30 s waits would end: the bound is generous for a loaded 2-core host
    # (1.0 s measured on a slow one, where the old 1 s bound failed), not a speed goal.
    assert gone_after < 5
    assert after_blocked == 0  # the pools keep their (idle) connections for the next requests
    # No thread per wait: what threads there are belong to gevent's own pool (DNS lookups, at
    # most 10) and the runtime, however many clients waited.
    assert process.num_threads() <= idle_threads + 12


def read_events(response: requests.Response, stop_after: int | None = None) -> list[dict]:
    """The SSE events of a streamed response: {"id", "event", "data"} each, until the result
    (or ``stop_after`` image events)."""
    events: list[dict] = []
    current: dict = {}
    for line in response.iter_lines(decode_unicode=True):
        if line == "":
            if "event" in current:
                events.append(current)
                if current["event"] == "result":
                    break
                if stop_after is not None and len(events) >= stop_after:
                    break
            current = {}
        elif line.startswith(":") or line.startswith("retry:"):
            continue
        else:
            name, _, value = line.partition(": ")
            current[name] = json.loads(value) if name == "data" else value
    return events


def test_job_events_stream_every_image_then_the_result_and_resume_after_a_reconnect(stack):
    web, worker, _ = stack
    os.kill(worker.pid, signal.SIGSTOP)
    colours = [("red", "green", "blue")[i % 3] for i in range(32)]
    files = [("image", (f"{i}.png", colour_image(colour, seed=i))) for i, colour in enumerate(colours)]
    submitted = requests.post(web.url + "/jobs", files=files, timeout=20)
    assert submitted.status_code == 202
    job = submitted.json()["id"]
    url = f"{web.url}/jobs/{job}/events"
    first = requests.get(url, stream=True, timeout=30)
    assert first.headers["Content-Type"].startswith("text/event-stream")
    os.kill(worker.pid, signal.SIGCONT)
    started = time.monotonic()
    before = read_events(first, stop_after=10)
    first.close()  # the client goes away mid-stream
    resumed = requests.get(url, headers={"Last-Event-ID": before[-1]["id"]}, stream=True, timeout=30)
    after = read_events(resumed)
    resumed.close()
    took = time.monotonic() - started
    images = [e for e in before + after if e["event"] == "image"]
    print(
        f"\nSSE for a job of 32 images: {len(before)} events, reconnect with Last-Event-ID, "
        f"{len(after)} more (the last the result) in {took:.2f} s"
    )
    assert sorted(e["data"]["index"] for e in images) == list(range(32))  # each once, none lost
    assert all(e["data"]["label"] == colours[e["data"]["index"]] for e in images)
    assert after[-1]["event"] == "result" and after[-1]["data"]["status"] == "done"
    assert [r["predictions"][0]["label"] for r in after[-1]["data"]["results"]] == colours
    ids = [e["id"] for e in before + after]
    assert len(set(ids)) == len(ids)


def test_simple_request_follows_a_job_by_id(stack):
    import subprocess
    import sys

    from .support import ROOT

    web, _, _ = stack
    colours = ["red", "blue", "green"]
    files = [("image", (f"{i}.png", colour_image(c, seed=i))) for i, c in enumerate(colours)]
    job = requests.post(web.url + "/jobs", files=files, timeout=20).json()["id"]
    command = [
        sys.executable,
        str(ROOT / "simple_request.py"),
        "--follow",
        job,
        "--url",
        web.url + "/predict",
    ]
    out = subprocess.run(
        [*command, "--url", web.url + "/predict"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    top = [line.split(". ", 1)[1].split(":")[0] for line in out.stdout.splitlines() if line.startswith("1. ")]
    assert top == colours
    assert "image" in out.stderr  # the progress bar


def flat_png(side: int) -> bytes:
    """Two flat halves: about 80 KB to upload, ``side`` x ``side`` pixels to decode."""
    image = Image.new("RGB", (side, side), (200, 30, 40))
    image.paste((30, 200, 50), (0, 0, side // 2, side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_health_checks_stay_fast_while_large_images_decode(stack):
    """Decoding runs on native threads (--web-threads), not on the event loop: /healthz keeps
    answering while 24 uploads of a 24-megapixel PNG decode, 6 at a time."""
    web, _, _ = stack
    data = flat_png(4900)
    idle = sorted(healthz_latencies(web.url, 30))
    with ThreadPoolExecutor(6) as pool:

        def upload(_: int) -> int:
            return requests.post(
                web.url + "/predict", files={"image": ("big.png", data)}, timeout=60
            ).status_code

        started = time.monotonic()
        uploads = [pool.submit(upload, i) for i in range(24)]
        time.sleep(0.2)  # the first decodes have begun
        busy: list[float] = []
        while not all(future.done() for future in uploads):
            busy += healthz_latencies(web.url, 1)
        codes = [future.result() for future in uploads]
        took = time.monotonic() - started
    busy.sort()
    p50, p90 = busy[len(busy) // 2], busy[int(len(busy) * 0.9)]
    print(
        f"\n24 uploads of a 4900x4900 PNG ({len(data) // 1024} KB) in {took:.1f} s, statuses "
        f"{sorted(set(codes))}; /healthz idle p50 {idle[15] * 1000:.1f} ms; while decoding "
        f"p50 {p50 * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms, max {busy[-1] * 1000:.1f} ms "
        f"({len(busy)} checks)"
    )
    assert codes == [200] * 24 and len(busy) >= 5
    # Measured: p50 6 ms with the decode threads, 393 ms with decoding on the loop (2 vCPUs).
    assert p50 < 0.1, "health checks waited for decodes: decoding is on the event loop again"
