"""Model choice and labels files."""

import json

import numpy as np
import pytest

from serving.models import Choice, ModelUnavailable, RuntimeOptions, choose_models, load_classifier
from serving.models.labels import imagenet_labels, load_labels
from serving.models.resnet50 import WEIGHTS_FILE


def test_imagenet_labels_ship_with_the_repository():
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert (labels[191], labels[812], labels[985]) == ("Airedale", "space shuttle", "daisy")


@pytest.mark.parametrize(
    "content",
    [
        json.dumps(["cat", "dog", "fox"]),
        json.dumps({"dog": 1, "cat": 0, "fox": 2}),  # Keras's class_indices
        json.dumps({"1": "dog", "0": "cat", "2": "fox"}),
    ],
)
def test_json_labels(tmp_path, content):
    path = tmp_path / "labels.json"
    path.write_text(content)
    assert load_labels(path) == ["cat", "dog", "fox"]


def test_class_indices_npy(tmp_path):
    path = tmp_path / "class_indices.npy"
    np.save(path, {"cat": 0, "dog": 1})
    assert load_labels(path) == ["cat", "dog"]


def test_labels_with_gaps_are_refused(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"cat": 0, "dog": 2}))
    with pytest.raises(ValueError, match="gaps"):
        load_labels(path)


def test_auto_tries_resnet50_then_the_bundled_model_unless_its_weights_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert [choice.model for choice in choose_models("auto", "imagenet")] == [
        "resnet50",
        "efficientnet_lite0",
    ]
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / WEIGHTS_FILE).write_bytes(b"stands in for the cached weights")
    assert choose_models("auto", "imagenet") == [
        Choice("resnet50", "its ImageNet weights are in the Keras cache")
    ]


def test_explicit_models_are_taken_as_given():
    assert choose_models("efficientnet_lite0", "imagenet") == [
        Choice("efficientnet_lite0", "chosen with --model")
    ]
    assert [choice.model for choice in choose_models("auto", "none")] == ["resnet50"]


def test_unknown_model_and_missing_labels_are_clear_errors(tmp_path, colour_model):
    with pytest.raises(ModelUnavailable, match="Unknown model"):
        load_classifier("vgg99")
    with pytest.raises(ModelUnavailable, match="--labels is required"):
        load_classifier(str(colour_model[0]))
    with pytest.raises(ModelUnavailable, match="does not exist"):
        load_classifier(str(tmp_path / "missing.keras"), labels="x.json")


def test_embedded_redis_starts_when_nothing_answers(monkeypatch, caplog):
    import logging

    import redis

    from serving.queue import embedded as redis_server
    from tests.support import free_port

    monkeypatch.setattr(redis_server, "DEFAULT_URL", f"redis://127.0.0.1:{free_port()}/0")
    with caplog.at_level(logging.INFO):
        url, embedded = redis_server.resolve_redis(None)
    try:
        assert embedded is not None and url.startswith("unix://")
        assert redis.Redis.from_url(url).ping()
        assert "started an embedded redis-server" in caplog.text
    finally:
        embedded.stop()
    assert not redis_server.answers(url)
    assert redis_server.resolve_redis("redis://example:1/0") == ("redis://example:1/0", None)


def test_warm_up_traces_the_one_graph_every_batch_size_then_uses(colour_model, monkeypatch):
    import tensorflow as tf

    from serving.images import prepare_image

    from .support import colour_image

    traced = []  # every tf.function the runtime makes, to count how often each traced
    make_function = tf.function

    def recording(*args, **kwargs):
        traced.append(make_function(*args, **kwargs))
        return traced[-1]

    monkeypatch.setattr(tf, "function", recording)

    classifier = load_classifier(
        str(colour_model[0]),
        labels=str(colour_model[1]),
        preprocess="unit",
        options=RuntimeOptions(runtime="tensorflow"),
    )
    classifier.warm_up((1, 8, 8))
    assert len(traced) == 1
    traced = traced[0]
    assert traced.experimental_get_tracing_count() == 1
    image = prepare_image(colour_image("blue"), classifier.input_size, max_pixels=10**6)
    probabilities = classifier.predict(np.stack([image] * 5))  # a batch size not warmed up
    assert traced.experimental_get_tracing_count() == 1  # no new trace on a client's call
    assert [classifier.labels[i] for i in probabilities.argmax(axis=1)] == ["blue"] * 5


@pytest.mark.slow
def test_resnet50_loads_a_local_weights_file_and_explains_a_bad_one(tmp_path):
    import keras

    reference = keras.applications.ResNet50(weights=None)
    weights = tmp_path / "resnet50.weights.h5"
    reference.save_weights(weights)
    classifier = load_classifier(
        "resnet50", weights=str(weights), options=RuntimeOptions(runtime="tensorflow")
    )
    pixels = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    from serving.models.preprocessing import caffe

    from .support import reference_preprocess

    expected = reference(reference_preprocess(caffe, pixels), training=False).numpy()
    np.testing.assert_allclose(classifier.predict(pixels), expected, rtol=1e-4, atol=1e-6)
    assert classifier.note == ""

    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an HDF5 file")
    with pytest.raises(ModelUnavailable, match="Could not load ResNet50 weights from .*bad.h5"):
        load_classifier("resnet50", weights=str(bad))


@pytest.mark.slow
def test_a_download_that_stalls_fails_instead_of_holding_the_start(tmp_path, monkeypatch):
    import socket
    import threading

    from serving.models import resnet50

    # A proxy that accepts the connection and never answers: a network that drops packets.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(silent.accept()), daemon=True).start()
    proxy = f"http://127.0.0.1:{silent.getsockname()[1]}"
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(resnet50, "DOWNLOAD_STALL_SECONDS", 1.0)
    timeout_before = socket.getdefaulttimeout()
    try:  # without the limit this hangs until pytest's timeout
        with pytest.raises(ModelUnavailable, match="could not be downloaded"):
            load_classifier("resnet50", weights="imagenet")
        assert accepted, "the download reached the silent proxy"
        assert socket.getdefaulttimeout() == timeout_before  # restored for everything after the download
        assert not (tmp_path / "models" / WEIGHTS_FILE).exists()  # no partial file left cached
    finally:
        for connection, _ in accepted:
            connection.close()
        silent.close()
