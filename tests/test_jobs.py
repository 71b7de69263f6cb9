"""Asynchronous jobs on the bulk lane, in-process against a real redis-server and real workers."""

from __future__ import annotations

import base64
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serving.models.classifier import Classifier
from serving.queue.keys import QueueKeys

from .support import COLOURS, colour_image, leftover_keys, pretend_worker, wait_until


def multipart(*images: bytes, **fields) -> dict:
    return {
        "data": {"image": [(io.BytesIO(data), f"{i}.png") for i, data in enumerate(images)], **fields},
        "content_type": "multipart/form-data",
    }


def finished(client, job_id: str, wait: float = 10) -> dict:
    response = client.get(f"/jobs/{job_id}?wait={wait}")
    assert response.status_code == 200, response.json
    return response.json


def test_a_job_is_accepted_at_once_and_ends_with_the_body_predict_gives(colour_app):
    client = colour_app.test_client()
    image = colour_image("blue")
    submitted = client.post("/jobs", **multipart(image))
    assert submitted.status_code == 202
    job_id = submitted.json["id"]
    assert submitted.headers["Location"] == f"/jobs/{job_id}"
    assert submitted.json == {
        "id": job_id,
        "status": "queued",
        "images": 1,
        "model": "colour",
        "version": "1",
    }
    body = finished(client, job_id)
    assert body["status"] == "done" and body["success"] is True and body["done"] == 1
    predicted = client.post("/predict", **multipart(image)).json
    assert body["predictions"] == predicted["predictions"] and body["model"] == predicted["model"]
    encoded = [base64.b64encode(colour_image(c)).decode() for c in COLOURS]
    several = client.post("/jobs", json={"images": encoded, "top_k": 1})
    results = finished(client, several.json["id"])["results"]
    assert [len(r["predictions"]) for r in results] == [1, 1, 1]  # top_k applies to every image
    assert [r["predictions"][0]["label"] for r in results] == list(COLOURS)
    by_predict = [client.post("/predict", json={"image": e, "top_k": 1}).json["predictions"] for e in encoded]
    assert [r["predictions"] for r in results] == by_predict


def test_fifty_jobs_from_eight_clients_each_end_with_their_own_answer(colour_app):
    names = list(COLOURS)

    def one(i):
        client = colour_app.test_client()
        colours = [names[(i + j) % 3] for j in range(1 + i % 3)]
        job = client.post("/jobs", **multipart(*(colour_image(c, seed=i) for c in colours))).json["id"]
        body = finished(client, job)
        got = (
            [body["predictions"][0]["label"]]
            if len(colours) == 1
            else [r["predictions"][0]["label"] for r in body["results"]]
        )
        return colours == got and body["status"] == "done"

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(one, range(50)))


class GatedClassifier(Classifier):
    """The colour model's shape; each batch waits until the test opens the gate, so the test
    knows when the job ends."""

    def __init__(self):
        super().__init__("colour", (32, 32), list(COLOURS))
        self.gate = threading.Event()

    def predict(self, batch):
        self.gate.wait(30)
        return np.tile(np.array([[0.8, 0.1, 0.1]], np.float32), (len(batch), 1))


def test_a_long_poll_returns_as_the_job_ends(colour_apps, module_redis):
    app = colour_apps(worker=False, heartbeat_ttl=60)
    client = app.test_client()
    queue = app.config["QUEUE_NAME"]
    from serving.queue.messages import Heartbeat, ModelInfo

    pretend_worker(
        module_redis, queue, "not-yet", Heartbeat(ModelInfo("colour", (32, 32), 3), "h", 1, 8), ttl=60
    )
    job = client.post("/jobs", **multipart(colour_image("red"))).json["id"]
    assert client.get(f"/jobs/{job}").json["status"] == "queued"
    answered: list = []
    polling = threading.Event()

    def poll():
        started = time.monotonic()
        polling.set()
        response = app.test_client().get(f"/jobs/{job}?wait=10")
        answered.append((started, time.monotonic(), response.json))

    poller = threading.Thread(target=poll)
    poller.start()
    assert polling.wait(10)
    gated = GatedClassifier()
    app.config["START_WORKER"](classifier=gated)
    wait_until(
        lambda: module_redis.hget(QueueKeys(queue).job(job), "status") == b"running",
        10,
        "the worker to take the job",
    )
    assert not answered  # still waiting: the job has not ended
    released = time.monotonic()
    gated.gate.set()  # the job ends now (its one image is answered a few ms later)
    poller.join(timeout=15)
    started, returned, body = answered[0]
    print(
        f"\nlong-poll returned {(returned - released) * 1000:.0f} ms after the job's image was released "
        f"({returned - started:.2f} s after it began)"
    )
    assert body["status"] == "done" and body["predictions"][0]["label"] == "red"
    # Woken by the job's end, not by a timer: within a second of it, where the wait was 10 s.
    assert returned - released < 1.0
    module_redis.delete(QueueKeys(queue).heartbeat("not-yet"))


class CountingClassifier(Classifier):
    """The colour model's shape, counting the images it is asked to compute."""

    def __init__(self):
        super().__init__("colour", (32, 32), list(COLOURS))
        self.computed = 0

    def predict(self, batch):
        self.computed += len(batch)
        return np.full((len(batch), 3), 1 / 3, np.float32)


def test_a_job_cancelled_while_queued_is_never_computed(colour_apps, module_redis):
    app = colour_apps(worker=False)
    client = app.test_client()
    queue = app.config["QUEUE_NAME"]
    from serving.queue.messages import Heartbeat, ModelInfo

    pretend_worker(
        module_redis, queue, "busy", Heartbeat(ModelInfo("colour", (32, 32), 3), "h", 1, 8), ttl=60
    )
    job = client.post("/jobs", **multipart(colour_image("red"), colour_image("green"))).json["id"]
    cancelled = client.delete(f"/jobs/{job}")
    assert cancelled.status_code == 200
    assert cancelled.json == {"id": job, "status": "cancelled", "images": 2, "done": 0, "cancelled": 2}
    assert client.get(f"/jobs/{job}").status_code == 404 and client.delete(f"/jobs/{job}").status_code == 404
    assert module_redis.llen(f"{QueueKeys(queue).tag}:bulk") == 0  # its images left the lane with the cancel
    counting = CountingClassifier()
    app.config["START_WORKER"](classifier=counting)
    after = client.post("/jobs", **multipart(colour_image("blue"))).json["id"]
    assert client.get(f"/jobs/{after}?wait=10").json["status"] == "done"
    assert counting.computed == 1  # only the job submitted after the cancel
    assert client.delete(f"/jobs/{after}").json["status"] == "deleted"
    module_redis.delete(f"{QueueKeys(queue).tag}:worker:busy")
    wait_until(lambda: leftover_keys(module_redis, queue) == [], 5, "the job's keys to go")


def test_an_expired_job_says_so_and_then_goes(colour_apps, module_redis):
    # Its deadline is 0.5 s away; its record stays 2 s after that (the job TTL), the time a loaded
    # machine has to see it expired before it goes.
    app = colour_apps(worker=False, job_timeout=0.5, job_ttl=2)
    client = app.test_client()
    queue = app.config["QUEUE_NAME"]
    from serving.queue.messages import Heartbeat, ModelInfo

    pretend_worker(
        module_redis, queue, "away", Heartbeat(ModelInfo("colour", (32, 32), 3), "h", 1, 8), ttl=60
    )
    job = client.post("/jobs", **multipart(colour_image("red"))).json["id"]
    body = wait_until(
        lambda: (state := client.get(f"/jobs/{job}").json)["status"] != "queued" and state,
        10,
        "the job's deadline to pass",
        interval=0.02,
    )
    assert body["status"] == "expired" and body["success"] is False and "not computed within" in body["error"]
    counting = CountingClassifier()
    app.config["START_WORKER"](classifier=counting)  # drops the image unrun, marks the job expired
    wait_until(
        lambda: module_redis.hget(f"{QueueKeys(queue).tag}:stats", "jobs:expired") == b"1",
        10,
        "the expiry to be counted",
    )
    assert counting.computed == 0
    wait_until(lambda: client.get(f"/jobs/{job}").status_code == 404, 10, "the expired job to go")
    module_redis.delete(f"{QueueKeys(queue).tag}:worker:away")
    assert leftover_keys(module_redis, queue) == []


def test_a_finished_jobs_result_can_be_deleted(colour_app):
    client = colour_app.test_client()
    job = client.post("/jobs", **multipart(colour_image("red"))).json["id"]
    assert finished(client, job)["status"] == "done"
    scrape = client.get("/metrics").get_data(as_text=True)
    assert (
        'inference_jobs_total{model="colour",status="done",version="1"}' in scrape
        and 'inference_queue_depth{lane="bulk",model="colour",version="1"} 0.0' in scrape
    )
    assert client.delete(f"/jobs/{job}").json == {"id": job, "status": "deleted", "images": 1}
    assert client.get(f"/jobs/{job}").status_code == 404


@pytest.mark.parametrize(
    "request_kwargs, status, words",
    [
        ({"json": {"images": []}}, 400, "carries no image"),
        ({"json": {"image": "!!"}}, 400, "not valid base64"),
        ({"data": b"x", "content_type": "text/plain"}, 415, "multipart/form-data"),
        ({"json": {"image": base64.b64encode(b"not an image").decode()}}, 400, "not an image"),
    ],
)
def test_bad_jobs_get_the_same_errors_as_predict(colour_app, request_kwargs, status, words):
    response = colour_app.test_client().post("/jobs", **request_kwargs)
    assert response.status_code == status and words in response.json["error"]


def test_unknown_jobs_and_bad_waits(colour_app):
    client = colour_app.test_client()
    assert client.get("/jobs/" + "0" * 32).status_code == 404
    assert client.get("/jobs/not-a-job").status_code == 404
    job = client.post("/jobs", **multipart(colour_image("red"))).json["id"]
    assert client.get(f"/jobs/{job}?wait=31").status_code == 400
    assert client.get(f"/jobs/{job}?wait=soon").status_code == 400


def test_a_full_bulk_lane_is_503_with_retry_after(colour_apps, module_redis):
    app = colour_apps(worker=False, max_job_queue_length=1)
    client = app.test_client()
    from serving.queue.messages import Heartbeat, ModelInfo

    pretend_worker(
        module_redis,
        app.config["QUEUE_NAME"],
        "idle",
        Heartbeat(ModelInfo("colour", (32, 32), 3), "h", 1, 8),
        ttl=60,
    )
    first = client.post("/jobs", **multipart(colour_image("red")))
    assert first.status_code == 202
    full = client.post("/jobs", **multipart(colour_image("red")))
    assert (
        full.status_code == 503 and full.headers["Retry-After"] and "job queue is full" in full.json["error"]
    )
    client.delete(f"/jobs/{first.json['id']}")


def test_with_no_worker_alive_images_of_the_last_model_queue_until_one_starts(colour_apps, module_redis):
    """Workers scaled to zero: the web tier still prepares images for the model they last served,
    and a worker that starts meanwhile answers them."""
    app = colour_apps(worker=False, client_timeout=20)
    queue = app.config["QUEUE_NAME"]
    from serving.queue.catalogue import Catalogue
    from serving.queue.messages import ModelInfo

    client = app.test_client()
    assert client.post("/predict", **multipart(colour_image("red"))).status_code == 503  # never seen: 503
    catalogue = Catalogue(module_redis, queue)
    catalogue.announce(ModelInfo("colour", (32, 32), 3), queue, ttl=60)
    catalogue.retire("colour", "1")  # its last worker stopped: known, not live
    assert catalogue.read().versions["colour"]["1"].queue == queue
    time.sleep(1.1)  # the web tier reads the workers' records at most once a second
    answers: list = []
    waiting = threading.Thread(
        target=lambda: answers.append(app.test_client().post("/predict", **multipart(colour_image("blue"))))
    )
    waiting.start()
    wait_until(
        lambda: module_redis.llen(QueueKeys(queue).tag) == 1,
        10,
        "the image to be queued with no worker alive",
    )
    app.config["START_WORKER"]()
    waiting.join(timeout=30)
    assert answers[0].status_code == 200 and answers[0].json["predictions"][0]["label"] == "blue"
