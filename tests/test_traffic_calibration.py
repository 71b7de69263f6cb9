"""--calibrate-on-traffic: INT8 made from a sample of the images the worker served, guarded,
switched to between two batches with no request failing, cached so a restart starts in INT8.
Real OpenVINO, NNCF, Redis and worker; the tiny colour model keeps a quantization under a second."""

from __future__ import annotations

import threading
from collections import defaultdict

import numpy as np
import pytest

from serving.models.traffic_calibration import ATTEMPTS, Reservoir, TrafficCalibration
from serving.queue.messages import Heartbeat
from serving.queue.redis_queue import RedisQueue
from serving.settings import TRAFFIC_IMAGES_RANGE, SettingsError, load_settings

from .support import COLOURS, colour_image, wait_until

SAMPLE = 60  # the fewest the guard can judge by


def distinct_images(count: int, seed: int = 0) -> np.ndarray:
    """Noisy solid-colour 32 x 32 images the colour model is sure of, none alike."""
    rng = np.random.default_rng(seed)
    base = np.array(list(COLOURS.values()), np.int16)[rng.integers(0, 3, count)]
    noise = rng.integers(-20, 21, (count, 32, 32, 3))
    return np.clip(base[:, None, None, :] + noise, 0, 255).astype(np.uint8)


def colour_classifier(colour_model, cache_dir, precision="int8", **changes):
    from serving.models import RuntimeOptions, load_classifier

    model_path, labels_path = colour_model
    options = RuntimeOptions(
        "openvino", precision, cache_dir=cache_dir, traffic_images=SAMPLE, batch_size=4, **changes
    )
    return load_classifier(str(model_path), labels=str(labels_path), preprocess="unit", options=options)


# The sample ------------------------------------------------------------------
def test_the_reservoir_is_a_bounded_uniform_sample_of_distinct_images():
    stream = np.arange(1000, dtype=np.uint16).view(np.uint8).reshape(1000, 1, 1, 2)  # image i holds i
    held_by_third = np.zeros(3)
    for seed in range(100):
        reservoir = Reservoir(100, (1, 1, 2), seed=seed)
        for start in range(0, 1000, 7):
            reservoir.offer(stream[start : start + 7])
        reservoir.offer(stream[:50])  # seen before: counted once
        assert reservoir.seen == 1000
        held = reservoir.take().view(np.uint16).ravel()
        assert len(held) == 100 and len(set(held.tolist())) == 100
        held_by_third += np.histogram(held, bins=[0, 333, 666, 1000])[0]
    # Uniform: each third of the stream holds a third of the sample (the first 100 would be 100 %).
    shares = held_by_third / held_by_third.sum()
    assert np.all(np.abs(shares - 1 / 3) < 0.03), shares


def test_a_repeated_image_does_not_fill_the_sample():
    reservoir = Reservoir(10, (2, 2, 3))
    same = np.full((8, 2, 2, 3), 7, np.uint8)
    for _ in range(20):
        reservoir.offer(same)
    assert reservoir.seen == 1 and len(reservoir.take()) == 1


def test_after_a_take_the_sample_starts_over_on_images_never_seen():
    stream = np.arange(1000, dtype=np.uint16).view(np.uint8).reshape(1000, 1, 1, 2)
    reservoir = Reservoir(100, (1, 1, 2), seed=3)
    reservoir.offer(stream[:150])
    first = set(reservoir.take().view(np.uint16).ravel().tolist())
    assert len(first) == 100
    reservoir.offer(stream[:400])  # the first 150 again, then 250 new ones
    second = reservoir.take().view(np.uint16).ravel().tolist()
    assert reservoir.seen == 400 and len(second) == 100
    assert min(second) >= 150, "a refused sample's images came back in the next one"
    assert len(reservoir.take()) == 0  # nothing new offered since


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--calibrate-on-traffic", "10"], "60 to 5000"),
        (["--calibrate-on-traffic", "6000"], "60 to 5000"),
        (["--calibrate-on-traffic", "100", "--calibration-dir", "x"], "give one"),
        (["--calibrate-on-traffic", "100", "--precision", "f32"], "precision int8 or auto"),
    ],
)
def test_traffic_calibration_settings_that_cannot_work_are_refused(flags, message):
    assert TRAFFIC_IMAGES_RANGE == (SAMPLE, 5000)
    with pytest.raises(SettingsError, match=message):
        load_settings(flags, environ={})
    assert load_settings(["--calibrate-on-traffic", "100"], environ={}).calibrate_on_traffic == 100


# Quantizing on served images -----------------------------------------------------
def test_a_refused_quantization_is_tried_again_on_more_traffic_then_given_up(colour_model, tmp_path):
    # A threshold no quantization meets: every attempt is refused by the real guard.
    classifier = colour_classifier(colour_model, tmp_path / "cache", int8_min_agreement=1.5)
    assert classifier.precision != "int8" and classifier.traffic_int8 is not None
    quantizer = classifier.traffic_int8
    samples: list[set[bytes]] = []

    def recorded(images):
        samples.append({image.tobytes() for image in images})
        return quantizer(images)

    calibration = TrafficCalibration(recorded, SAMPLE, (32, 32, 3), [1, 4])
    images = distinct_images(8 * SAMPLE)
    offered = 0
    for attempt in range(1, ATTEMPTS + 1):
        while calibration.attempts < attempt:
            calibration.offer(images[offered : offered + 4])
            offered += 4
        assert offered >= SAMPLE * 2 ** (attempt - 1)  # each try waits for twice the images
        assert calibration.wait(60), "a quantization of the colour model took over a minute"
        assert calibration.ready() is None
    assert len(calibration.reasons) == ATTEMPTS
    assert len(samples) == ATTEMPTS and all(len(sample) == SAMPLE for sample in samples)
    for earlier, later in zip(samples, samples[1:]):  # each try on a fresh sample
        assert not earlier & later, "a refused sample's images were quantized on again"
    assert all("below --int8-min-agreement 1.5" in reason for reason in calibration.reasons)
    assert not calibration.sampling and calibration.reservoir is None  # the pixels are given back
    calibration.offer(images[:4])
    assert calibration.attempts == ATTEMPTS
    assert not (tmp_path / "cache" / "openvino-int8").exists()  # a refusal is not cached


def test_the_switch_to_int8_made_from_traffic_loses_no_request_and_a_restart_starts_in_int8(
    colour_apps, colour_model, tmp_path, module_redis, monkeypatch
):
    from serving.models import int8
    from serving.worker.loop import traffic_calibration

    classifier = colour_classifier(colour_model, tmp_path / "cache")
    started_in = classifier.precision
    assert started_in in ("f32", "bf16")
    app = colour_apps(worker=False, precision="int8", calibrate_on_traffic=SAMPLE, batch_size=4)
    worker = app.config["START_WORKER"](classifier=classifier)
    assert worker.calibration is not None
    wait_until(lambda: app.test_client().get("/readyz").status_code == 200, 30, "the worker")

    stop = threading.Event()
    seen: dict[int, list[tuple[int, str, str, str]]] = defaultdict(list)  # client -> answers in order

    def client(number: int) -> None:
        http = app.test_client()
        for request in range(10_000):
            if stop.is_set():
                return
            colour = list(COLOURS)[(number + request) % 3]
            response = http.post(
                "/predict",
                data=colour_image(colour, seed=number * 10_000 + request),
                content_type="image/png",
            )
            body = response.json
            label = body["predictions"][0]["label"] if response.status_code == 200 else ""
            precision = body.get("model", {}).get("precision", "") if response.status_code == 200 else ""
            seen[number].append((response.status_code, colour, label, precision))

    clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in clients:
        thread.start()
    try:
        wait_until(lambda: classifier.precision == "int8", 120, "the switch to INT8 made from traffic")
        switched = sum(len(answers) for answers in seen.values())
        wait_until(
            lambda: sum(len(a) for a in seen.values()) >= switched + 40, 60, "answers after the switch"
        )
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=30)

    answers = [answer for client_answers in seen.values() for answer in client_answers]
    assert {status for status, *_ in answers} == {200}, "a request failed across the switch"
    assert all(label == colour for _, colour, label, _ in answers)
    for client_answers in seen.values():  # one worker: once INT8 answers, only INT8 does
        precisions = [precision for *_, precision in client_answers]
        first_int8 = precisions.index("int8") if "int8" in precisions else len(precisions)
        assert set(precisions[:first_int8]) <= {started_in} and set(precisions[first_int8:]) <= {"int8"}
    assert {precision for *_, precision in answers} == {started_in, "int8"}
    assert worker.calibration is None and classifier.int8_agreement == 1.0
    assert classifier.traffic_int8 is None  # the quantizer and the f32 graph it holds are let go
    assert classifier.compiled.traffic_int8 is None and worker._to_sample is None

    # The heartbeat and /readyz say so.
    queue = RedisQueue(module_redis, app.config["QUEUE_NAME"])
    beat = Heartbeat.from_bytes(module_redis.get(queue.keys.heartbeat(worker.worker_id)))
    assert (beat.model.precision, beat.model.int8_agreement) == ("int8", 1.0)
    wait_until(lambda: '"int8"' in app.test_client().get("/readyz").text, 10, "/readyz naming int8")

    def no_calibration(*args, **kwargs):
        raise AssertionError("INT8 made from traffic was quantized again")

    monkeypatch.setattr(int8, "quantize", no_calibration)
    again = colour_classifier(colour_model, tmp_path / "cache")
    assert (again.precision, again.int8_agreement) == ("int8", 1.0)
    assert traffic_calibration(again, worker.settings) is None  # nothing to sample: INT8 already
    sample = distinct_images(4, seed=1)
    np.testing.assert_array_equal(again.predict(sample), classifier.predict(sample))


def fastest_is_unquantized(monkeypatch):
    """--precision auto on a CPU where INT8 is timed slower than f32/bf16 (the colour model is
    too small for the timing to say so reliably)."""
    from serving.models import runtimes
    from serving.models.auto_choice import Choice

    def unquantized(name, shape, core, candidates, options, sizes=None):
        precision = next(precision for precision in candidates if precision != "int8")
        return Choice(precision, options.batch_size, "not timed")

    monkeypatch.setattr(runtimes, "_measured_choice", unquantized)


def test_int8_that_passes_its_guard_but_runs_slower_is_cached_and_not_calibrated_again(
    colour_model, tmp_path, monkeypatch, caplog
):
    from serving.models import int8

    fastest_is_unquantized(monkeypatch)
    classifier = colour_classifier(colour_model, tmp_path / "cache", precision="auto")
    assert classifier.precision in ("f32", "bf16") and classifier.traffic_int8 is not None
    calibration = TrafficCalibration(classifier.traffic_int8, SAMPLE, (32, 32, 3), [1, 4])
    calibration.offer(distinct_images(SAMPLE))
    assert calibration.wait(60), "a quantization of the colour model took over a minute"
    assert calibration.ready() is None
    assert calibration.reasons == [f"INT8 passed its guard, but {classifier.precision} is faster on this CPU"]
    assert not calibration.sampling and calibration.reservoir is None  # another sample: same model
    calibration.offer(distinct_images(4 * SAMPLE, seed=2))
    assert calibration.attempts == 1
    assert (tmp_path / "cache" / "openvino-int8").is_dir()  # the guard's verdict is kept

    def no_calibration(*args, **kwargs):
        raise AssertionError("INT8 made from traffic was quantized again")

    monkeypatch.setattr(int8, "quantize", no_calibration)
    with caplog.at_level("INFO", logger="serving.models"):
        slower_here = colour_classifier(colour_model, tmp_path / "cache", precision="auto")
    assert slower_here.precision == classifier.precision
    assert slower_here.traffic_int8 is None  # timed slower again at this start: nothing to sample
    assert "slower on this CPU: not calibrating again" in caplog.text
    monkeypatch.undo()  # a CPU where INT8 wins starts in it, from the cache
    monkeypatch.setattr(int8, "quantize", no_calibration)
    faster = colour_classifier(colour_model, tmp_path / "cache", precision="int8")
    assert (faster.precision, faster.int8_agreement) == ("int8", 1.0)


def test_an_attempt_that_ends_after_its_worker_stopped_is_never_switched_to(colour_model, tmp_path):
    classifier = colour_classifier(colour_model, tmp_path / "cache")
    quantizer = classifier.traffic_int8
    go = threading.Event()

    def held_back(images):  # a quantization still running when the worker stops
        assert go.wait(60)
        return quantizer(images)

    calibration = TrafficCalibration(held_back, SAMPLE, (32, 32, 3), [1, 4])
    calibration.offer(distinct_images(SAMPLE))
    assert calibration.attempts == 1 and not calibration.wait(0.1)
    calibration.close()
    go.set()
    assert calibration.wait(60)
    assert calibration.ready() is None and not calibration.sampling
    calibration.offer(distinct_images(4 * SAMPLE, seed=2))  # a late batch starts nothing
    assert calibration.attempts == 1
    assert (tmp_path / "cache" / "openvino-int8").is_dir()  # its guard passed: cached for the next start


def test_a_stopping_worker_closes_its_traffic_calibration(colour_apps, colour_model, tmp_path):
    classifier = colour_classifier(colour_model, tmp_path / "cache")
    app = colour_apps(worker=False, precision="int8", calibrate_on_traffic=SAMPLE, batch_size=4)
    worker = app.config["START_WORKER"](classifier=classifier)
    calibration = worker.calibration
    assert calibration is not None and calibration.sampling
    worker.stop()
    wait_until(lambda: calibration.closed, 30, "the stopping worker to close its calibration")
    assert not calibration.sampling and calibration.ready() is None
