"""The worker tier's factory, beside the web tier's ``create_app``: load the model on its
runtime, warm it up, and connect a worker to the queue."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from serving import tracing
from serving.models import ModelUnavailable, RuntimeOptions, configure_tensorflow, load_classifier, repository
from serving.models.ir_cache import default_cache_dir
from serving.queue import DEFAULT_URL, open_queue
from serving.queue.catalogue import Catalogue, model_queue_name
from serving.settings import Settings
from serving.worker.loop import IDLE_TIMEOUT, ModelWorker, served_model
from serving.worker.stats import RedisBatchStats

log = logging.getLogger(__name__)


def from_repository(settings: Settings) -> Settings:
    """With --model-repository: the settings of the version the worker serves, from its folder."""
    if not settings.model_repository:
        return settings
    source = repository.locate(Path(settings.model_repository), settings.model, settings.model_version)
    log.info("serving %s version %s from %s", source.name, source.version, source.model_file.parent)
    return settings.replace(
        model=str(source.model_file),
        labels=str(source.labels_file),
        preprocess=source.preprocess or settings.preprocess,
        resize=source.resize or settings.resize,
        batch_size=source.batch_size or settings.batch_size,
        model_name=source.name,
        model_version=source.version,
        given=settings.given | ({"batch_size"} if source.batch_size else set()),  # set in its config
    )


def create_worker(settings: Settings) -> ModelWorker:
    """Load the model on its runtime (warmed up: ready means warm) and connect a worker to the
    queue of the model version it serves."""
    settings = from_repository(settings)
    if settings.precision == "int8" and not (settings.calibration_dir or settings.calibrate_on_traffic):
        raise ModelUnavailable(
            "--precision int8 needs calibration images like the traffic: give --calibration-dir DIR, "
            "or --calibrate-on-traffic N to sample N served images"
        )
    tracing.configure(settings)  # once per process: a no-op unless --tracing on
    configure_tensorflow(settings.model_threads)
    options = RuntimeOptions(
        settings.runtime,
        settings.precision,
        settings.model_threads,
        Path(settings.model_cache) if settings.model_cache else default_cache_dir(),
        calibration_dir=Path(settings.calibration_dir) if settings.calibration_dir else None,
        int8_min_agreement=settings.int8_min_agreement,
        max_image_pixels=settings.max_image_pixels,
        batch_size=settings.batch_size,
        choose_batch_size="batch_size" not in settings.given,  # a batch size that was set wins
        batch_latency=settings.batch_latency_ms / 1000,
        traffic_images=settings.calibrate_on_traffic,
    )
    classifier = load_classifier(
        settings.model, settings.weights, settings.labels, settings.preprocess, settings.resize, options
    )
    if classifier.note:
        log.warning("%s", classifier.note)
    if classifier.chosen_batch_size and classifier.chosen_batch_size != settings.batch_size:
        log.info(
            "batches of up to %d images, not %d: what --precision auto measured best here (above)",
            classifier.chosen_batch_size,
            settings.batch_size,
        )
        settings = settings.replace(batch_size=classifier.chosen_batch_size)
    started = time.perf_counter()
    # Every batch size once, before the first heartbeat: ready means warm (OpenVINO prepares
    # each new input shape on its first call, TensorFlow traces its graph once).
    batch_seconds = classifier.warm_up(range(1, settings.batch_size + 1))
    log.info("%s warmed up in %.0f ms", classifier.name, (time.perf_counter() - started) * 1000)
    served = served_model(settings, classifier.name)  # what the catalogue and every answer call it
    queue = open_queue(
        settings.redis_url or DEFAULT_URL,
        model_queue_name(settings.queue_name, *served),
        call_timeout=settings.redis_timeout,
        longest_block=IDLE_TIMEOUT,
        min_replicas=settings.redis_min_replicas,
    )
    # Batch stats go to Redis, so /metrics on any web server reports every worker's.
    return ModelWorker(
        queue,
        classifier,
        settings.replace(model_name=served[0], model_version=served[1]),
        observer=RedisBatchStats(queue),
        batch_seconds=batch_seconds,
        catalogue=Catalogue(queue.redis, settings.queue_name),
    )
