"""The model worker against a real redis-server, with the tiny Keras colour model."""

import threading
import time

import keras
import numpy as np
import orjson
import pytest
import redis

from helpers import encode_array
from serving.models import load_classifier
from serving.models.classifier import Classifier
from serving.queue import RedisQueue
from serving.worker import ModelWorker, WorkerConfig

from .support import COLOURS, TINY_INPUT, leftover_keys

Q = "workerq"


@pytest.fixture(scope="module")
def classifier(colour_model):
    model_path, labels_path = colour_model
    return load_classifier(str(model_path), labels=str(labels_path), preprocess="unit")


def _pixels(colour):
    return np.full((TINY_INPUT, TINY_INPUT, 3), COLOURS[colour], dtype=np.uint8)


def _send(queue, request_id, pixels=None, deadline_in=30.0, raw=None):
    now = time.time()
    message = raw or orjson.dumps({"id": request_id, "queued_at": now, "deadline": now + deadline_in,
                                   "image": encode_array(pixels)})
    assert queue.enqueue(message, request_id, max_length=10_000, wait_seconds=30)


def _result(queue, request_id, timeout=5.0):
    raw = queue.wait_result(request_id, timeout)
    return orjson.loads(raw) if raw else None


def _worker(redis_server, classifier, **config):
    queue = RedisQueue(redis.Redis.from_url(redis_server.url), Q)
    return ModelWorker(queue, classifier, WorkerConfig(**{"batch_wait_ms": 0, **config}))


def test_a_batch_is_answered_with_each_requests_own_prediction(redis_client, redis_server, classifier):
    worker = _worker(redis_server, classifier)
    colours = ["red", "green", "blue", "green", "red"]
    for i, colour in enumerate(colours):
        _send(worker.queue, f"r{i}", _pixels(colour))
    assert worker.step() == 5
    for i, colour in enumerate(colours):
        result = _result(worker.queue, f"r{i}")
        assert result["success"] and result["predictions"][0]["label"] == colour
        assert result["batch"]["size"] == 5 and len(result["predictions"]) == 3
    assert leftover_keys(redis_client, Q) == []


def test_one_bad_message_does_not_fail_its_batch(redis_client, redis_server, classifier):
    worker = _worker(redis_server, classifier)
    _send(worker.queue, "good", _pixels("blue"))
    _send(worker.queue, "bad-data", raw=orjson.dumps({"id": "bad-data", "deadline": time.time() + 30,
                                                      "image": {"dtype": "uint8", "shape": [2],
                                                                "data": "!!"}}))
    _send(worker.queue, "bad-shape", np.zeros((5, 5, 3), np.uint8))
    _send(worker.queue, "garbage", raw=b"not json at all")
    worker.step()
    assert _result(worker.queue, "good")["predictions"][0]["label"] == "blue"
    for request_id in ("bad-data", "bad-shape"):
        result = _result(worker.queue, request_id)
        assert not result["success"] and result["status"] == 500 and "image" in result["error"]
    redis_client.delete(worker.queue.waiting_key("garbage"))  # its sender would time out
    assert leftover_keys(redis_client, Q) == []


def test_a_message_without_a_valid_deadline_gets_an_error_and_its_batch_goes_on(
        redis_client, redis_server, classifier):
    worker = _worker(redis_server, classifier)
    image = encode_array(_pixels("red"))
    for request_id, deadline in (("text-deadline", "soon"), ("null-deadline", None)):
        _send(worker.queue, request_id, raw=orjson.dumps({"id": request_id, "deadline": deadline,
                                                          "image": image}))
    _send(worker.queue, "good", _pixels("green"))
    assert worker.step() == 3
    assert _result(worker.queue, "good")["predictions"][0]["label"] == "green"
    for request_id in ("text-deadline", "null-deadline"):
        result = _result(worker.queue, request_id)
        assert not result["success"] and "deadline" in result["error"]
    assert leftover_keys(redis_client, Q) == []


class FailingObserver:
    def batch_done(self, size, seconds):
        raise RuntimeError("metrics backend broke")

    def dropped_expired(self):
        pass


def test_an_unexpected_failure_still_answers_the_batch_and_the_worker_goes_on(
        redis_client, redis_server, classifier):
    worker = _worker(redis_server, classifier)
    worker.observer = FailingObserver()
    for i in range(3):
        _send(worker.queue, f"r{i}", _pixels("blue"))
    _send(worker.queue, "garbage", raw=b"not json at all")
    assert worker.step() == 4
    for i in range(3):
        result = _result(worker.queue, f"r{i}", timeout=1)
        assert result == {"success": False, "status": 500,
                          "error": "The server failed on this request's batch."}
    redis_client.delete(worker.queue.waiting_key("garbage"))  # its sender would time out
    assert leftover_keys(redis_client, Q) == []  # the processing list was cleared

    worker.observer = None
    _send(worker.queue, "after", _pixels("red"))
    worker.step()
    assert _result(worker.queue, "after")["predictions"][0]["label"] == "red"


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
        result = _result(worker.queue, f"r{i}", timeout=1)
        assert result == {"success": False, "status": 500,
                          "error": "The model failed on this request's batch."}


def test_expired_requests_are_dropped_not_computed(redis_client, redis_server, classifier):
    worker = _worker(redis_server, classifier)
    _send(worker.queue, "late", _pixels("red"), deadline_in=-1)
    _send(worker.queue, "on-time", _pixels("green"))
    worker.step()
    assert _result(worker.queue, "on-time")["batch"]["size"] == 1
    assert _result(worker.queue, "late", timeout=0.2) is None


def test_two_workers_on_one_queue_never_process_the_same_message(redis_client, redis_server, classifier):
    workers = [_worker(redis_server, classifier, batch_size=4) for _ in range(2)]
    threads = [threading.Thread(target=w.run) for w in workers]
    for thread in threads:
        thread.start()
    colours = list(COLOURS)
    try:
        for i in range(200):
            _send(workers[0].queue, f"r{i}", _pixels(colours[i % 3]))
        results = {f"r{i}": _result(workers[0].queue, f"r{i}", timeout=20) for i in range(200)}
    finally:
        for worker in workers:
            worker.stop()
        for thread in threads:
            thread.join()
    for i in range(200):
        assert results[f"r{i}"]["predictions"][0]["label"] == colours[i % 3]
    by_worker = {w.worker_id: sum(r["batch"]["worker"] == w.worker_id for r in results.values())
                 for w in workers}
    assert sum(by_worker.values()) == 200 and all(by_worker.values()), by_worker
    assert leftover_keys(redis_client, Q) == []
    assert not redis_client.keys(f"{Q}:worker:*")  # both signed off


def test_heartbeat_describes_the_model(redis_client, redis_server, classifier):
    worker = _worker(redis_server, classifier, heartbeat_ttl=3)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not worker.queue.live_workers() and time.monotonic() < deadline:
            time.sleep(0.05)
        info = worker.queue.live_workers()[worker.worker_id]
        assert info["model"]["input_size"] == [TINY_INPUT, TINY_INPUT]
        assert 0 < redis_client.pttl(worker.queue.heartbeat_key(worker.worker_id)) <= 3000
    finally:
        worker.stop()
        thread.join()


def test_logits_models_get_a_softmax(tmp_path):
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(inputs))
    path = tmp_path / "logits.keras"
    keras.Model(inputs, outputs).save(path)
    (tmp_path / "labels.json").write_text('{"cat": 0, "dog": 1}')
    loaded = load_classifier(str(path), labels=str(tmp_path / "labels.json"), preprocess="tf")
    probabilities = loaded.predict(np.random.default_rng(0).integers(0, 255, (3, 8, 8, 3), dtype=np.uint8))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert loaded.labels == ("cat", "dog")
