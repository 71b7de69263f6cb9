"""The model worker against a real redis-server, with the tiny Keras colour model."""

import threading
import time
from collections import Counter

import keras
import msgpack
import numpy as np
import pytest

from serving.models import load_classifier
from serving.models.classifier import Classifier
from serving.queue import JobSpec
from serving.queue.connection import open_queue
from serving.queue.keys import QueueKeys
from serving.queue.messages import BULK, INTERACTIVE, Answer, Request
from serving.worker.loop import ModelWorker
from serving.worker.stats import BatchObserver

from .support import COLOURS, TINY_INPUT, leftover_keys, make_settings, push_raw, wait_until

Q = "workerq"


@pytest.fixture(scope="module")
def classifier(colour_model):
    model_path, labels_path = colour_model
    return load_classifier(str(model_path), labels=str(labels_path), preprocess="unit")


def _pixels(colour):
    return np.full((TINY_INPUT, TINY_INPUT, 3), COLOURS[colour], dtype=np.uint8)


def _send(queue, request_id, pixels=None, deadline_in=30.0, raw=None, top_k=3):
    now = time.time()
    message = raw or Request(request_id, 0, pixels, top_k, now, now + deadline_in).to_bytes()
    assert queue.enqueue(request_id, [message], max_length=10_000, keep_seconds=30)


def _result(queue, request_id, timeout=5.0):
    answers = queue.wait_answers(request_id, 1, timeout)
    return answers[0] if answers else None


def _worker(redis_server, classifier, **settings):
    queue = open_queue(redis_server.url, Q, call_timeout=5, longest_block=30)
    return ModelWorker(queue, classifier, make_settings(**{"batch_wait_ms": 0, **settings}))


def _bad(**fields) -> bytes:
    """A message whose sender can be read, with ``fields`` replaced."""
    good = msgpack.unpackb(Request("x", 0, _pixels("red"), 3, time.time(), time.time() + 30).to_bytes())
    return msgpack.packb({**good, **fields})


def test_a_batch_is_answered_with_each_requests_own_prediction(redis_client, redis_server, classifier):
    worker = _worker(redis_server, classifier)
    colours = ["red", "green", "blue", "green", "red"]
    for i, colour in enumerate(colours):
        _send(worker.queue, f"r{i}", _pixels(colour))
    assert worker.step() == 5
    for i, colour in enumerate(colours):
        answer = _result(worker.queue, f"r{i}")
        assert answer.ok and answer.body["predictions"][0]["label"] == colour
        assert answer.body["predictions"][0]["class_id"] == list(COLOURS).index(colour)
        assert answer.body["batch"]["size"] == 5 and len(answer.body["predictions"]) == 3
    assert leftover_keys(redis_client, Q) == []


def test_each_request_gets_its_own_top_k_within_one_batch(redis_client, redis_server, classifier):
    worker = _worker(redis_server, classifier)
    for k in (1, 3, 2):
        _send(worker.queue, f"k{k}", _pixels("blue"), top_k=k)
    assert worker.step() == 3
    for k in (1, 3, 2):
        answer = _result(worker.queue, f"k{k}")
        assert len(answer.body["predictions"]) == k and answer.body["batch"]["size"] == 3


def test_one_bad_message_fails_alone(redis_client, redis_server, classifier):
    worker = _worker(redis_server, classifier)
    _send(worker.queue, "good", _pixels("blue"))
    for request_id, fields in (
        ("huge-shape", {"shape": [1e20, 3, 3]}),
        ("bad-data", {"pixels": b"!!"}),
        ("text-deadline", {"deadline": "soon"}),
        ("null-deadline", {"deadline": None}),
    ):
        _send(worker.queue, request_id, raw=_bad(reply_to=request_id, **fields))
    _send(worker.queue, "bad-shape", np.zeros((5, 5, 3), np.uint8))
    _send(worker.queue, "garbage", raw=b"not a message at all")
    assert worker.step() == 7
    assert _result(worker.queue, "good").body["predictions"][0]["label"] == "blue"
    # Even a message that names nobody is answered: the reference it was taken by does.
    for request_id in ("huge-shape", "bad-data", "text-deadline", "null-deadline", "bad-shape", "garbage"):
        answer = _result(worker.queue, request_id)
        assert answer.status == 500 and answer.body["error"].startswith("The queued"), request_id
    assert leftover_keys(redis_client, Q) == []


def test_a_message_that_names_another_request_than_its_reference_is_refused(
    redis_client, redis_server, classifier
):
    """Whoever can write the queue's keys could file one request's image under another's; the
    worker answers the request that queued it, with an error, never the one the message names."""
    worker = _worker(redis_server, classifier)
    now = time.time()
    _send(worker.queue, "victim", _pixels("red"))
    _send(worker.queue, "filer", raw=Request("victim", 0, _pixels("blue"), 3, now, now + 30).to_bytes())
    assert worker.step() == 2
    assert _result(worker.queue, "victim").body["predictions"][0]["label"] == "red"
    answer = _result(worker.queue, "filer")
    assert answer.status == 500 and "not its reference" in answer.body["error"]
    assert _result(worker.queue, "victim", timeout=0.2) is None  # answered once, by its own image
    assert leftover_keys(redis_client, Q) == []


def test_whole_messages_queued_by_a_web_server_from_before_references_are_answered(
    redis_client, redis_server, classifier
):
    """A rolling upgrade, workers first: web servers of the version before put whole messages in
    the lanes (and a waiting marker each), and the new worker still answers them."""
    worker = _worker(redis_server, classifier)
    now = time.time()
    whole = Request("old", 0, _pixels("green"), 3, now, now + 30).to_bytes()
    broken = _bad(reply_to="old-broken", pixels=b"!!")
    for request_id in ("old", "old-broken"):
        redis_client.hset(worker.queue.keys.waiting(request_id), "0", "1")
    push_raw(worker.queue, INTERACTIVE, whole, broken, b"neither", whole=True)
    _send(worker.queue, "new", _pixels("red"))
    assert worker.step() == 4
    assert _result(worker.queue, "old").body["predictions"][0]["label"] == "green"
    assert _result(worker.queue, "new").body["predictions"][0]["label"] == "red"
    assert _result(worker.queue, "old-broken").status == 500
    assert leftover_keys(redis_client, Q) == []


class BrokenObserver(BatchObserver):
    def batch_done(self, size, seconds):
        raise RuntimeError("metrics backend broke")


def test_predictions_survive_a_broken_observer(redis_client, redis_server, classifier):
    worker = _worker(redis_server, classifier)
    worker.observer = BrokenObserver()
    colours = ["red", "green", "blue"]
    for i, colour in enumerate(colours):
        _send(worker.queue, f"r{i}", _pixels(colour))
    assert worker.step() == 3
    for i, colour in enumerate(colours):
        assert _result(worker.queue, f"r{i}", timeout=1).body["predictions"][0]["label"] == colour
    assert leftover_keys(redis_client, Q) == []


class BrokenModel(Classifier):
    def predict(self, batch):
        raise RuntimeError("out of memory")


def test_a_failing_model_answers_every_request_with_an_error(redis_client, redis_server, classifier):
    broken = BrokenModel("broken", classifier.input_size, classifier.labels)
    worker = _worker(redis_server, broken)
    for i in range(3):
        _send(worker.queue, f"r{i}", _pixels("red"))
    worker.step()
    for i in range(3):
        answer = _result(worker.queue, f"r{i}", timeout=1)
        assert answer.status == 500 and answer.body == {"error": "The model failed on this request's batch."}
    assert leftover_keys(redis_client, Q) == []


def test_an_unexpected_failure_still_answers_the_batch_and_the_worker_goes_on(
    redis_client, redis_server, classifier, monkeypatch
):
    worker = _worker(redis_server, classifier)
    for i in range(2):
        _send(worker.queue, f"r{i}", _pixels("blue"))
    # And a whole message from a web server of the version before references, answered as well.
    redis_client.hset(worker.queue.keys.waiting("r2"), "0", "1")
    now = time.time()
    whole = Request("r2", 0, _pixels("blue"), 3, now, now + 30).to_bytes()
    push_raw(worker.queue, INTERACTIVE, whole, whole=True)
    with monkeypatch.context() as patch:
        patch.setattr(worker, "compute", lambda parsed, batch_id: 1 / 0)
        assert worker.step() == 3
    for i in range(3):
        answer = _result(worker.queue, f"r{i}", timeout=1)
        assert answer.status == 500 and answer.body == {"error": "The server failed on this request's batch."}
    assert leftover_keys(redis_client, Q) == []  # the processing list was cleared
    _send(worker.queue, "after", _pixels("red"))
    worker.step()
    assert _result(worker.queue, "after").body["predictions"][0]["label"] == "red"


def test_a_failed_batch_answers_its_job_images_too(redis_client, redis_server, classifier, monkeypatch):
    worker = _worker(redis_server, classifier)
    now = time.time()
    image = Request("job", 0, _pixels("red"), 3, now, now + 30, lane=BULK).to_bytes()
    assert worker.queue.create_job(JobSpec("job", now, now + 30, 3, False, 60), [image], 100)
    _send(worker.queue, "interactive", _pixels("blue"))
    with monkeypatch.context() as patch:
        patch.setattr(worker, "read", lambda batch: 1 / 0)  # e.g. fetching the job's images
        assert worker.step() == 2
    assert _result(worker.queue, "interactive").status == 500
    state, results = worker.queue.job_state("job")
    assert state["status"] == "failed" and Answer.from_bytes(results[0], "job").status == 500
    worker.queue.cancel_job("job")
    wait_until(lambda: leftover_keys(redis_client, Q) == [], 5, "the job's keys to go")


def test_expired_requests_are_dropped_not_computed(redis_client, redis_server, classifier):
    worker = _worker(redis_server, classifier)
    _send(worker.queue, "late", _pixels("red"), deadline_in=-1)
    _send(worker.queue, "on-time", _pixels("green"))
    worker.step()
    assert _result(worker.queue, "on-time").body["batch"]["size"] == 1
    assert _result(worker.queue, "late", timeout=0.2) is None
    redis_client.delete(worker.queue.keys.waiting("late"))  # its client was told 504 and withdrew
    _send(worker.queue, "late-alone", _pixels("red"), deadline_in=-1)
    worker.step()  # a batch with nothing to run still clears the processing list
    redis_client.delete(worker.queue.keys.waiting("late-alone"))
    assert leftover_keys(redis_client, Q) == []


class CountingModel(Classifier):
    """A model that counts the images it computes (thread-safe: two workers share it)."""

    def __init__(self, model: Classifier):
        super().__init__(model.name, model.input_size, model.labels)
        self.model = model
        self.computed = 0
        self._lock = threading.Lock()

    def predict(self, batch):
        with self._lock:
            self.computed += len(batch)
        return self.model.predict(batch)


def test_two_workers_on_one_queue_never_process_the_same_message(redis_client, redis_server, classifier):
    counting = CountingModel(classifier)
    workers = [_worker(redis_server, counting, batch_size=4) for _ in range(2)]
    threads = [threading.Thread(target=w.run) for w in workers]
    for thread in threads:
        thread.start()
    colours = list(COLOURS)
    results = {}
    try:
        for i in range(200):
            _send(workers[0].queue, f"r{i}", _pixels(colours[i % 3]))
        # Collect the answers for 30 s at most; an image computed twice ends the wait at once.
        give_up = time.monotonic() + 30
        pending = [f"r{i}" for i in range(200)]
        while pending and time.monotonic() < give_up and counting.computed <= 200:
            if answer := _result(workers[0].queue, pending[0], timeout=0.2):
                results[pending.pop(0)] = answer
    finally:
        for worker in workers:
            worker.stop()
        for thread in threads:
            thread.join()
    # Answers are written once even for an image computed twice; the model's count is not.
    assert counting.computed == 200
    assert len(results) == 200, f"{200 - len(results)} requests were never answered"
    for i in range(200):
        assert results[f"r{i}"].body["predictions"][0]["label"] == colours[i % 3]
    by_worker = Counter(r.body["batch"]["worker"] for r in results.values())
    assert set(by_worker) <= {w.worker_id for w in workers}, by_worker
    assert leftover_keys(redis_client, Q) == []
    assert not redis_client.keys(f"{QueueKeys(Q).tag}:worker:*")  # both signed off


def test_heartbeat_describes_the_model(redis_client, redis_server, classifier):
    worker = _worker(redis_server, classifier, heartbeat_ttl=3)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_until(worker.queue.live_workers, 5, "the worker's heartbeat")
        beat = worker.queue.live_workers()[worker.worker_id]
        assert beat.model.input_size == (TINY_INPUT, TINY_INPUT)
        assert (beat.model.runtime, beat.model.precision) == (classifier.runtime, classifier.precision)
        assert 0 < redis_client.pttl(worker.queue.keys.heartbeat(worker.worker_id)) <= 3000
    finally:
        worker.stop()
        thread.join()


def test_whether_outputs_need_a_softmax_is_decided_once_from_the_model(tmp_path):
    inputs = keras.Input((8, 8, 3))
    flat = keras.layers.Flatten()(inputs)
    (tmp_path / "labels.json").write_text('{"cat": 0, "dog": 1}')
    for name, outputs, probabilities in (
        ("logits", keras.layers.Dense(2)(flat), False),
        ("softmax", keras.layers.Dense(2, activation="softmax")(flat), True),
    ):
        path = tmp_path / f"{name}.keras"
        keras.Model(inputs, outputs).save(path)
        loaded = load_classifier(str(path), labels=str(tmp_path / "labels.json"), preprocess="tf")
        assert loaded.outputs_probabilities is probabilities
        batch = np.random.default_rng(0).integers(0, 255, (3, 8, 8, 3), dtype=np.uint8)
        np.testing.assert_allclose(loaded.predict(batch).sum(axis=1), 1.0, rtol=1e-5)
        assert loaded.labels == ("cat", "dog")
