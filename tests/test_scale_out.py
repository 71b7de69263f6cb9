"""Scale-out under faults, with real processes on loopback: nginx (deploy/nginx.conf) round-robins
over two gunicorn web servers (gunicorn.conf.py); model workers run as `--role worker`; all share
one real redis-server. Every image has its own known answer (tests/cluster.py), so each reply is
checked for being this request's answer, not just a plausible one.
"""

from __future__ import annotations

import re
import signal
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from serving.queue.keys import QueueKeys

from .cluster import (
    QUEUE,
    Cluster,
    Nginx,
    WebServer,
    assert_no_leftovers,
    distinct_answers,
    fire,
    freeze_holding_a_batch,
    held_request_ids,
    start_workers,
    tally,
    wait_until,
)
from .support import LiveServer, colour_queue, free_port

WAITING = f"{QueueKeys(colour_queue(QUEUE)).tag}:waiting:*"  # the markers of requests in flight

pytestmark = pytest.mark.slow  # starts servers, browsers or full-size models

BATCH_LINE = re.compile(r"batch \w+: \d+ images")  # the worker's debug line per model call
# The worker's debug line per batch answered (serving/worker/loop.py).
ANSWERED_LINE = re.compile(
    r"batch \w+: (\d+) of (\d+) answers written, (\d+) images dropped for their deadline, "
    r"(\d+) with no message left"
)


def test_load_spreads_over_both_web_servers_and_both_workers(fresh):
    if fresh.nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light): the round-robin test needs it")
    start_workers(fresh.worker("worker1"), fresh.worker("worker2"))
    indexes = range(300)
    assert distinct_answers(indexes)

    outcomes = fire(fresh.entry, indexes, concurrency=32)
    counts = tally(outcomes)
    per_web = Counter(o.headers.get("X-Served-By") for o in outcomes)
    per_worker = Counter(o.body.get("batch", {}).get("worker") for o in outcomes)
    print(f"\nround robin: {counts}; per web server {dict(per_web)}; per worker {dict(per_worker)}")

    assert counts.answered == counts.sent == 300, [o for o in outcomes if o.status != 200][:3]
    workers = {o.body["batch"]["worker"] for o in outcomes}
    assert workers == {w.worker_id for w in fresh.workers}
    served_by = {o.headers["X-Served-By"] for o in outcomes}
    assert served_by == {f"127.0.0.1:{web.port}" for web in fresh.webs}
    # Each web server's own access log holds the client ids it answered, together all of them.
    logged = [web.served_request_ids() for web in fresh.webs]
    assert all(logged) and set.union(*logged) == {o.client_id for o in outcomes}
    assert sum(fresh.nginx.upstreams_used().values()) >= 300
    # A client that sends no X-Request-ID gets the one nginx made up, passed through the app.
    response = requests.get(fresh.entry + "/readyz", timeout=5)
    assert response.status_code == 200 and response.json()["workers"] == 2
    assert len(response.headers["X-Request-ID"]) == 32
    fresh.stop_workers()
    assert_no_leftovers(fresh)


def test_killed_worker_mid_batch_loses_no_request(fresh):
    # Batching windows long enough that the queue backs up and the victim is killed holding a batch.
    survivor = fresh.worker("survivor", "--batch-size", "16", "--batch-wait-ms", "500")
    victim = fresh.worker("victim", "--batch-size", "16", "--batch-wait-ms", "2000", slow=True)
    start_workers(survivor, victim)

    with ThreadPoolExecutor(1) as pool:
        load = pool.submit(fire, fresh.entry, range(150), 24)
        held = freeze_holding_a_batch(fresh, victim, least=4)  # killed with a batch in its hands
        victim.signal(signal.SIGKILL)
        victim.wait(10)
        outcomes = load.result()
    counts = tally(outcomes)
    print(f"\nkill -9 mid-batch ({len(held)} requests in the killed batch): {counts}")

    assert counts.lost == counts.duplicated == counts.mixed_up == 0
    assert counts.answered + counts.timed_out == counts.sent
    rescued = [o for o in outcomes if o.body.get("request_id") in held]
    assert len(rescued) == len(held)
    assert all(o.status == 200 and o.body["batch"]["worker"] == survivor.worker_id for o in rescued)
    fresh.stop_workers()
    assert_no_leftovers(fresh)


def test_frozen_worker_that_wakes_after_its_batch_was_requeued_does_not_answer_twice(fresh):
    """A worker that stalls (SIGSTOP: a long GC pause, a VM freeze) loses its heartbeat; its batch is
    requeued and answered by another. When it wakes it computes the batch again: that second
    result must reach no client and leave no key behind."""
    survivor = fresh.worker("survivor", "--batch-size", "16", "--batch-wait-ms", "500")
    sleeper = fresh.worker(
        "sleeper", "--batch-size", "16", "--batch-wait-ms", "2000", "--log-level", "DEBUG", slow=True
    )
    start_workers(survivor, sleeper)

    progress: list = []
    with ThreadPoolExecutor(1) as pool:
        load = pool.submit(fire, fresh.entry, range(60), 12, 30, "t", progress)
        held = freeze_holding_a_batch(fresh, sleeper, least=4)
        frozen_at = len(sleeper.log())  # its answers for what it holds come after this
        wait_until(
            lambda: held <= {o.body.get("request_id") for o in list(progress)},
            30,
            "the frozen worker's requests to be answered by the survivor",
        )
        sleeper.signal(signal.SIGCONT)  # wakes while the load goes on, its batch long since answered
        sleeper.signal(signal.SIGTERM)  # it finishes (and tries to answer) the batch it held, then exits
        assert sleeper.wait(30) == 0
        outcomes = load.result()
    # Frozen before or after its model call, the woken worker finishes the batch it held: all of
    # it is answered (computed, dropped for a deadline on a slow host, or found answered already:
    # its messages gone) and none of it written.
    # Frozen in its batching window, it may take a few more on waking, whose answers it may write.
    woken = ANSWERED_LINE.findall(sleeper.log()[frozen_at:])
    assert woken, "the woken worker finished its batch"
    written, answers, dropped, gone = map(int, woken[0])
    taken_on_waking = answers + dropped + gone - len(held)
    assert taken_on_waking >= 0 and written <= taken_on_waking, (woken, len(held))
    counts = tally(outcomes)
    rescued = [o for o in outcomes if o.body.get("request_id") in held]
    print(
        f"\nworker frozen mid-batch ({len(held)} requests held, computed twice; "
        f"{taken_on_waking} taken on waking): {counts}"
    )

    assert held and len(rescued) == len(held)
    assert all(o.status == 200 and o.body["batch"]["worker"] == survivor.worker_id for o in rescued)
    assert counts.answered == counts.sent and counts.duplicated == 0
    fresh.stop_workers()
    assert_no_leftovers(fresh)


def test_requests_that_expired_in_a_dead_workers_hands_are_dropped_not_computed(fresh):
    """Clients that gave up (504) while a dead worker held their request: the worker that starts
    next returns the dead one's messages to the queue, then drops them unrun for their deadline."""
    victim = fresh.worker("victim-expiring", "--batch-size", "8", "--batch-wait-ms", "3000")
    start_workers(victim)
    client_timeout = 1.0
    web = WebServer(
        "web-short-timeout", fresh.redis_url, QUEUE, fresh.log_dir, CLIENT_TIMEOUT=str(client_timeout)
    )
    try:
        with ThreadPoolExecutor(1) as pool:
            load = pool.submit(fire, web.url, range(4), 4, 30, "late")
            held = freeze_holding_a_batch(fresh, victim, least=1, timeout=20)
            victim.signal(signal.SIGKILL)
            victim.wait(10)
            outcomes = load.result()
    finally:
        web.stop()
    counts = tally(outcomes)
    assert held and counts.timed_out == counts.sent == 4
    # Each 504 came at its deadline: not before it, and not long after (a generous margin).
    waits = sorted(round(o.seconds, 2) for o in outcomes)
    assert all(0.9 * client_timeout <= o.seconds < client_timeout + 2 for o in outcomes), waits

    successor = fresh.worker("successor", "--log-level", "DEBUG")
    start_workers(successor)
    client = fresh.client()
    wait_until(
        lambda: (
            not list(client.scan_iter(match=f"{QueueKeys(colour_queue(QUEUE)).tag}:processing:*"))
            and not client.llen(QueueKeys(colour_queue(QUEUE)).tag)
        ),
        20,
        "the dead worker's messages to be requeued and taken",
    )
    print(
        f"\nexpired in a dead worker's hands ({len(held)} held): {counts}; recomputed: "
        f"{len(BATCH_LINE.findall(successor.log()))} batches"
    )
    assert f"returned {len(held)} messages of dead workers" in successor.log()
    assert not BATCH_LINE.findall(successor.log())
    fresh.stop_workers()
    assert_no_leftovers(fresh)


def test_sigterm_mid_batch_answers_the_batch_and_web_server_drains(fresh):
    worker = fresh.worker("draining", "--batch-size", "8", "--batch-wait-ms", "2000")
    start_workers(worker)
    # A web server of its own, so stopping it leaves the shared web tier intact.
    web = WebServer("web-draining", fresh.redis_url, QUEUE, fresh.log_dir)
    try:
        with ThreadPoolExecutor(1) as pool:
            load = pool.submit(fire, web.url, range(6), 6, 30, "drain")
            client = fresh.client()
            wait_until(
                lambda: len(list(client.scan_iter(match=WAITING))) == 6,
                20,
                "all six requests to be queued",
            )
            wait_until(lambda: held_request_ids(fresh, worker), 20, "the worker to take a batch")
            worker.signal(signal.SIGTERM)
            web.signal(signal.SIGTERM)
            outcomes = load.result()
        counts = tally(outcomes)
        print(f"\nSIGTERM mid-batch: {counts}")
        assert counts.answered == counts.sent == 6
        assert {o.body["batch"]["worker"] for o in outcomes} == {worker.worker_id}
        assert worker.wait(30) == 0 and web.wait(30) == 0
        assert "Shutting down: Master" in web.log()
        with pytest.raises(requests.ConnectionError):
            requests.get(web.url + "/healthz", timeout=2)
    finally:
        web.stop()
    assert_no_leftovers(fresh)


def test_web_server_stopped_behind_nginx_under_load_fails_no_request(fresh):
    if fresh.nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light): the rolling-stop test needs it")
    start_workers(fresh.worker("steady", "--batch-wait-ms", "50"))
    leaving = WebServer("web-leaving", fresh.redis_url, QUEUE, fresh.log_dir)
    nginx = Nginx([fresh.webs[0].port, leaving.port], fresh.log_dir, name="nginx-rolling")
    progress: list = []
    try:
        with ThreadPoolExecutor(1) as pool:
            load = pool.submit(fire, nginx.url, range(300), 16, 30, "rolling", progress)
            wait_until(lambda: len(progress) >= 60, 30, "load to be under way")
            leaving.signal(signal.SIGTERM)
            outcomes = load.result()
        assert leaving.wait(30) == 0
    finally:
        nginx.stop()
        leaving.stop()
    counts = tally(outcomes)
    print(
        f"\nweb server stopped behind nginx under load: {counts}; "
        f"nginx upstreams used: {sorted(nginx.upstreams_used().values())}"
    )
    assert counts.answered == counts.sent, [o for o in outcomes if o.status != 200][:3]
    fresh.stop_workers()
    assert_no_leftovers(fresh)


def test_redis_outage_gives_fast_503s_and_service_resumes(fresh):
    start_workers(fresh.worker("steady", "--batch-wait-ms", "300"))  # requests wait while Redis stops
    # `python run_keras_server.py --role web` (gevent.pywsgi) beside the gunicorn web servers.
    role_web = LiveServer(
        "--role",
        "web",
        "--redis-url",
        fresh.redis_url,
        "--queue-name",
        QUEUE,
        log_path=fresh.log_dir / "role-web.log",
    ).start()
    try:
        check_outage_and_recovery(fresh, [fresh.entry, role_web.url])
    finally:
        role_web.stop()


def check_outage_and_recovery(fresh: Cluster, entries: list[str]) -> None:
    before = [o for url in entries for o in fire(url, range(20), 8)]
    assert tally(before).answered == len(before)

    client = fresh.client()
    progress: list = []
    try:
        with ThreadPoolExecutor(len(entries)) as pool:
            loads = [pool.submit(fire, url, range(20, 140), 8, 10, "outage", progress) for url in entries]
            wait_until(
                lambda: len(progress) >= 20 and len(list(client.scan_iter(match=WAITING))) >= 4,
                20,
                "some answers, and requests waiting on theirs",
            )
            fresh.redis_server.stop()
            during = [o for load in loads for o in load.result()]
        counts = tally(during)
        slowest = max(o.seconds for o in during if o.status == 503)
        print(f"\nRedis stopped under load: {counts}; slowest 503 in {slowest * 1000:.0f} ms")
        assert counts.refused > 0 and counts.answered >= 20
        assert counts.answered + counts.refused == counts.sent, [o for o in during if o.status != 200][:3]
        for url in [web.url for web in fresh.webs] + entries:
            assert requests.get(url + "/readyz", timeout=5).status_code == 503
    finally:
        fresh.restart_redis()

    # The same processes serve again once Redis is back on its port; no restart.
    wait_until(
        lambda: requests.get(fresh.entry + "/readyz", timeout=5).status_code == 200,
        20,
        "the worker's heartbeat to reach the new Redis",
    )
    after = [o for url in entries for o in fire(url, range(80, 140), 8)]
    counts = tally(after)
    print(f"after Redis came back: {counts}")
    assert counts.answered == counts.sent
    assert all(worker.alive() for worker in fresh.workers) and all(web.alive() for web in fresh.webs)
    fresh.stop_workers()
    assert_no_leftovers(fresh)


def test_oversized_upload_gets_json_413_from_gunicorn_and_nginx(cluster):
    too_big = b"\0" * (10 * 1024 * 1024 + 1)  # MAX_UPLOAD_BYTES, and nginx's client_max_body_size
    targets = [cluster.webs[0].url] + ([cluster.nginx.url] if cluster.nginx else [])
    for url in targets:
        with requests.Session() as session:
            response = session.post(url + "/predict", files={"image": ("big.png", too_big)}, timeout=30)
            assert response.status_code == 413, url
            assert response.headers["Content-Type"].startswith("application/json")
            assert response.json()["success"] is False
            # The same client goes on: its next upload is read and answered by the app (a file that
            # is no image is a 400 naming it, whether or not a worker runs now).
            after = session.post(url + "/predict", files={"image": ("notes.png", b"just text")}, timeout=30)
            assert after.status_code == 400 and "not an image" in after.json()["error"], url


def test_nginx_answers_json_when_no_web_server_is_up(cluster):
    if cluster.nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    nginx = Nginx([free_port()], cluster.log_dir, name="nginx-no-upstream")
    try:
        response = requests.get(nginx.url + "/readyz", headers={"X-Request-ID": "probe-1"}, timeout=10)
        assert response.status_code == 503
        assert response.json()["success"] is False
        assert response.headers["Retry-After"] == "1"
        assert response.headers["X-Request-ID"] == "probe-1"
    finally:
        nginx.stop()
