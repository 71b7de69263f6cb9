"""--precision auto chooses the precision and the largest batch by measuring (serving/models/
auto_choice.py): the rule on given timings, then a worker that takes its choice on a real model."""

from __future__ import annotations

import logging

import pytest

from serving.models.auto_choice import choose, sizes_to_time
from serving.settings import load_settings

from .support import colour_queue

MS = 0.001


def test_the_sizes_timed_are_powers_of_two_and_the_largest_batch():
    assert sizes_to_time(1) == [1]
    assert sizes_to_time(8) == [1, 2, 4, 8]
    assert sizes_to_time(6) == [1, 2, 4, 6]
    assert sizes_to_time(32) == [1, 2, 4, 8, 16, 32]


def test_a_batch_that_moves_more_images_per_second_is_chosen():
    choice = choose({"f32": {1: 10 * MS, 4: 20 * MS, 8: 30 * MS}}, overhead=0)
    assert (choice.precision, choice.batch_size) == ("f32", 8)


def test_where_batching_gains_little_the_smaller_batch_is_chosen():
    # 3 % more images per second is not worth each image waiting for a batch four times the size.
    choice = choose({"f32": {1: 10 * MS, 4: 40 * MS / 1.03}}, overhead=0)
    assert choice.batch_size == 1
    # 10 % more is.
    assert choose({"f32": {1: 10 * MS, 4: 40 * MS / 1.10}}, overhead=0).batch_size == 4


def test_the_fastest_precision_wins_at_its_own_best_batch():
    seconds = {
        "f32": {1: 40 * MS, 2: 70 * MS, 4: 130 * MS},
        "bf16": {1: 20 * MS, 2: 38 * MS, 4: 70 * MS},
        "int8": {1: 12 * MS, 2: 18 * MS, 4: 35 * MS},
    }
    choice = choose(seconds, overhead=0)
    assert (choice.precision, choice.batch_size) == ("int8", 2)  # 111 img/s; 4 gives 114 (+3 %)
    assert "int8 [1: 83.3, 2: 111.1, 4: 114.3] img/s" in str(choice)
    assert str(choice).endswith("serving int8 in batches of up to 2")


def test_the_per_batch_overhead_keeps_tiny_batches_from_looking_as_fast():
    seconds = {"f32": {1: 1 * MS, 8: 8 * MS}}  # the model alone: the same rate at 1 and at 8
    assert choose(seconds, overhead=0).batch_size == 1
    assert choose(seconds).batch_size == 8  # the worker's own millisecond per batch counts


def test_the_latency_budget_bounds_the_batch_and_batch_1_always_qualifies():
    seconds = {"f32": {1: 30 * MS, 4: 60 * MS, 8: 100 * MS}}
    assert choose(seconds, latency_budget=0.07, overhead=0).batch_size == 4
    assert choose(seconds, latency_budget=0.01, overhead=0).batch_size == 1  # over it, but it runs
    assert choose(seconds, overhead=0).batch_size == 8


def test_nothing_measured_is_an_error():
    with pytest.raises(ValueError):
        choose({})


def worker_settings(colour_model, redis_server, *flags: str, environ: dict | None = None):
    model, labels = colour_model
    return load_settings(
        [
            "--role", "worker", "--redis-url", redis_server.url, "--queue-name", colour_queue("auto-choice"),
            "--model", str(model), "--labels", str(labels), "--preprocess", "unit",
            "--runtime", "openvino", *flags,
        ],
        environ or {},
    )  # fmt: skip


def test_a_worker_on_auto_runs_the_batch_size_it_measured_and_says_so(
    colour_model, redis_server, tmp_path, caplog
):
    from serving.worker.factory import create_worker

    caplog.set_level(logging.INFO)
    # No batch of more than one image fits a budget this small: the choice is batches of 1.
    settings = worker_settings(
        colour_model, redis_server, "--precision", "auto", "--batch-latency-ms", "0.001",
        "--model-cache", str(tmp_path),
    )  # fmt: skip
    assert settings.batch_size == 8  # the default: left to the worker to choose under
    worker = create_worker(settings)
    assert worker.classifier.chosen_batch_size == 1
    assert worker.settings.batch_size == worker.policy.batch_size == 1
    assert worker._heartbeat.batch_size == 1  # what /readyz and the dashboards read
    assert "batches of up to 1 images, not 8" in caplog.text
    line = next(r.getMessage() for r in caplog.records if "Precision auto" in r.getMessage())
    assert "[1: " in line and ", 8: " in line  # timed up to the largest batch allowed


def test_an_explicit_precision_keeps_the_batch_size_it_was_given(colour_model, redis_server, tmp_path):
    from serving.worker.factory import create_worker

    settings = worker_settings(
        colour_model, redis_server, "--precision", "f32", "--batch-latency-ms", "0.001",
        "--model-cache", str(tmp_path),
    )  # fmt: skip
    worker = create_worker(settings)
    assert worker.classifier.chosen_batch_size is None
    assert worker.settings.batch_size == worker.policy.batch_size == 8


@pytest.mark.parametrize("given", ["flag", "environment"])
def test_a_batch_size_that_was_set_wins_over_the_measured_choice(
    given, colour_model, redis_server, tmp_path, caplog, monkeypatch
):
    from serving.worker.factory import create_worker

    caplog.set_level(logging.INFO)
    flags = ["--precision", "auto", "--batch-latency-ms", "0.001", "--model-cache", str(tmp_path)]
    if given == "flag":
        settings = worker_settings(colour_model, redis_server, *flags, "--batch-size", "8")
    else:
        settings = worker_settings(colour_model, redis_server, *flags, environ={"BATCH_SIZE": "8"})
    worker = create_worker(settings)
    assert worker.settings.batch_size == worker.policy.batch_size == 8
    assert "batches of up to 1" not in caplog.text
