"""The model worker: take a batch from Redis, run the model once, answer every image in it."""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import replace
from typing import cast

import numpy as np
import redis

from serving import tracing
from serving.models.classifier import Classifier
from serving.models.traffic_calibration import TrafficCalibration
from serving.queue import Batch, RedisQueue
from serving.queue.catalogue import Catalogue
from serving.queue.connection import patient_retry
from serving.queue.messages import (
    BULK,
    INTERACTIVE,
    Answer,
    BatchInfo,
    Heartbeat,
    ModelInfo,
    Prediction,
)
from serving.queue.redis_queue import NotReplicated
from serving.settings import Settings
from serving.worker.batch_messages import (
    BATCH_FAILED,
    MODEL_FAILED,
    BatchResult,
    Parsed,
    error_for_each,
    parse_batch,
)
from serving.worker.batch_traces import batch_span, image_spans
from serving.worker.batching import BatchPolicy
from serving.worker.stats import BatchObserver

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 1.0  # longest block on empty lanes, so a stop request is seen within a second
# A retired version's last worker stops once its lanes stayed empty this long: longer than a web
# server's catalogue refresh (serving/web/model_directory.py), so no request routed to it is stranded.
DRAIN_QUIET_SECONDS = 2.5
RETRY_SECONDS = 0.25  # how soon a worker tries Redis again after a failed wait for work


def served_model(settings: Settings, classifier_name: str) -> tuple[str, str]:
    """The name and version a worker serves under: as set, else the model's own name (made a
    valid model name) and version 1."""
    name = settings.model_name or re.sub(r"[^A-Za-z0-9_-]", "_", classifier_name)[:64].lstrip("_-")
    return name or "model", settings.model_version or "1"


def describe(classifier: Classifier, name: str | None = None, version: str = "1") -> ModelInfo:
    """The model as the wire records it: what web servers need to prepare its images."""
    return ModelInfo(
        name=name or classifier.name,
        version=version,
        input_size=classifier.input_size,
        classes=len(classifier.labels),
        resize=classifier.resize,
        runtime=classifier.runtime,
        precision=classifier.precision,
        int8_agreement=classifier.int8_agreement,
        note=classifier.note,
    )


def traffic_calibration(classifier: Classifier, settings: Settings) -> TrafficCalibration | None:
    """With --calibrate-on-traffic and a model that serves unquantized on OpenVINO: the sampler
    that will make its INT8 model from served images."""
    if not settings.calibrate_on_traffic or classifier.precision == "int8":
        return None  # off, or already INT8 (from an earlier start's traffic, cached)
    if classifier.traffic_int8 is None:
        log.warning(
            "--calibrate-on-traffic needs OpenVINO; %s runs on %s: no INT8 from traffic",
            classifier.name,
            classifier.runtime or "no runtime",
        )
        return None
    width, height = classifier.input_size
    return TrafficCalibration(
        classifier.traffic_int8,
        settings.calibrate_on_traffic,
        (height, width, 3),
        range(1, settings.batch_size + 1),
        name=classifier.name,
    )


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class ModelWorker:
    def __init__(
        self,
        queue: RedisQueue,
        classifier: Classifier,
        settings: Settings,
        worker_id: str | None = None,
        observer: BatchObserver | None = None,
        batch_seconds: dict[int, float] | None = None,
        catalogue: Catalogue | None = None,
    ):
        self.queue = queue
        self.classifier = classifier
        self.settings = settings
        self.worker_id = worker_id or new_worker_id()
        self.stopping = threading.Event()  # asked to stop: no new batch, but a retired version drains
        self._finished = threading.Event()  # run has returned
        self.observer = observer or BatchObserver()
        self._input_shape = (classifier.input_size[1], classifier.input_size[0], 3)
        # When a batch is ready and how much bulk work it may carry (from warm-up, then followed).
        self.policy = BatchPolicy(settings.batch_size, settings.batch_wait_ms / 1000, batch_seconds)
        self.served = served_model(settings, classifier.name)
        self._model = describe(classifier, *self.served)  # as every answer names it
        # Where web servers learn that this version is served, and from which queue.
        self.catalogue = catalogue or Catalogue(queue.redis, settings.queue_name)
        self._heartbeat = Heartbeat(
            model=self._model, host=socket.gethostname(), pid=os.getpid(), batch_size=settings.batch_size
        )
        # Answers are worth writing while their clients may still wait: retry that long.
        self._answer_retry = patient_retry(settings.request_lifetime)
        self._redis_away = False
        self.calibration = traffic_calibration(classifier, settings)  # INT8 from served images
        self._to_sample: np.ndarray | None = None  # the last batch's pixels, sampled once answered

    # Lifecycle -----------------------------------------------------------------
    def stop(self) -> None:
        """Finish the batch in hand, then return from ``run``."""
        self.stopping.set()

    def run(self) -> None:
        info = self._model
        log.info(
            "worker %s serving %s version %s (runtime %s, precision %s, resize %s), batches of up to %d",
            self.worker_id,
            info.name,
            info.version,
            info.runtime or "-",
            info.precision or "-",
            info.resize,
            self.settings.batch_size,
        )
        try:  # alive before the first take, or another worker could requeue what this one holds
            self._beat()
        except redis.RedisError:
            pass  # Redis is down; the heartbeat loop keeps trying
        heart = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        heart.start()
        try:
            while not self.stopping.is_set():
                try:
                    self.step()
                except Exception:  # a bug must not take the worker down with it
                    log.exception("worker step failed; continuing")
                    self.stopping.wait(1.0)
            self._drain_if_retired()
        finally:
            self.stopping.set()
            if self.calibration is not None:  # an attempt still quantizing never hands a model over
                self.calibration.close()
            self._finished.set()
            heart.join(timeout=2)
            try:
                self.queue.sign_off(self.worker_id)
                if not self.queue.live_workers():
                    self.catalogue.retire(*self.served)
            except redis.RedisError:
                pass
            log.info("worker %s stopped", self.worker_id)

    def _drain_if_retired(self) -> None:
        """The last worker of a version that is no longer current answers what its lanes still
        hold before it stops: no other worker takes from them, and web servers stopped routing to
        them (at most a directory refresh ago, hence the quiet period). Bounded by a request's
        lifetime; job images left after that expire at their deadline."""
        name, version = self.served
        try:
            if self.catalogue.read().current(name) == version or set(self.queue.live_workers()) - {
                self.worker_id
            }:
                return
            log.info(
                "version %s of %s is retired: answering what its lanes hold before stopping", version, name
            )
            give_up = time.monotonic() + self.settings.request_lifetime
            quiet_since = time.monotonic()
            while time.monotonic() < give_up:
                if self.step() or self.queue.depth(INTERACTIVE) or self.queue.depth(BULK):
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= DRAIN_QUIET_SECONDS:
                    return
            log.warning("stopping with work still queued for retired version %s of %s", version, name)
        except redis.RedisError as exc:
            log.warning("could not drain retired version %s of %s: %s", version, name, exc)

    def step(self) -> int:
        """Take and answer one batch. Returns how many messages it took."""
        if self.calibration is not None:
            self._switch_if_ready(self.calibration)
        try:
            batch = self.policy.next_batch(self.queue, self.worker_id, IDLE_TIMEOUT)
        except redis.RedisError as exc:
            # Soon again: after a failover the new primary is found on the next try. Said once
            # per outage, not four times a second.
            if not self._redis_away:
                log.warning(
                    "Redis unavailable while waiting for work (%s); retrying every %.2f s", exc, RETRY_SECONDS
                )
            self._redis_away = True
            self.stopping.wait(RETRY_SECONDS)
            return 0
        if self._redis_away:
            log.info("Redis answers again")
            self._redis_away = False
        if batch:
            self.policy.took(len(batch))
            self.answer(batch, self.policy.first_taken_ns)
        return len(batch)

    def _switch_if_ready(self, calibration: TrafficCalibration) -> None:
        """Between two batches: serve the INT8 model made from traffic once it is ready."""
        sampling = calibration.sampling  # read first: a success hands its model over, then stops sampling
        switch = calibration.ready()
        if switch is None:
            if not sampling:
                self._stop_calibrating()  # refused for good: f32/bf16 serves on
            return
        before = self.classifier.precision
        self.classifier.use(switch.model)
        self.policy.remeasured(switch.batch_seconds)
        self._model = describe(self.classifier, *self.served)
        self._heartbeat = replace(self._heartbeat, model=self._model)
        self._stop_calibrating()
        log.info(
            "worker %s switched %s from %s to INT8 between two batches: %s",
            self.worker_id,
            self._model.name,
            before,
            switch.reason,
        )
        try:  # say so now, not at the next heartbeat
            self._beat()
        except redis.RedisError:
            pass

    def _beat(self) -> None:
        self.queue.beat(self.worker_id, self._heartbeat, self.settings.heartbeat_ttl)
        self.catalogue.announce(self._model, self.queue.name, self.settings.heartbeat_ttl)

    def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_ttl / 3
        next_reap = 0.0
        while not self._finished.is_set():  # beating on while a retired version drains
            try:
                self._beat()
                if time.monotonic() >= next_reap:
                    moved = self.queue.requeue_dead()
                    if moved:
                        log.warning("returned %d messages of dead workers to the queue", moved)
                    next_reap = time.monotonic() + self.settings.heartbeat_ttl
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)
            self._finished.wait(interval)

    # One batch -----------------------------------------------------------------
    def answer(self, batch: Batch, taken_ns: int = 0) -> None:
        """Compute and write the batch's answers; then tell the observer, which must never cost
        an answer. ``taken_ns`` (epoch ns) is when its first messages were taken."""
        taken_ns = taken_ns or time.time_ns()
        try:
            parsed: Parsed | None = self.read(batch)
        except Exception:  # answer the batch anyway: a live worker's batch is never requeued
            log.exception("reading a batch of %d failed", len(batch))
            parsed = None
        batch_id = uuid.uuid4().hex[:12]
        requests = parsed.requests if parsed else []
        with batch_span(batch, requests, batch_id, taken_ns, self._model, self.worker_id) as span:
            result = self._result(batch, parsed, batch_id)
            with tracing.span("write answers", {"inference.answers": len(result.answers)}):
                written = self._write(result)
            # Fewer written than answered: the rest were answered elsewhere (a requeued batch
            # computed twice) or their clients gave up. Images with no message left were
            # answered elsewhere or withdrawn before this worker read them.
            log.debug(
                "batch %s: %s of %d answers written, %d images dropped for their deadline, "
                "%d with no message left",
                batch_id,
                "?" if written is None else written,
                len(result.answers),
                result.expired,
                len(batch) - (parsed.read if parsed else len(batch)),
            )
            if span.is_recording():
                failed = sum(answer.status >= 500 for answer in result.answers)
                span.set_attributes(
                    {
                        "inference.batch.size": result.computed,
                        "inference.batch.expired": result.expired,
                        "inference.batch.failed": failed,
                    }
                )
                if failed:
                    span.set_status(tracing.StatusCode.ERROR, f"{failed} images failed")
                image_spans(requests, result.answers, span, batch_id, taken_ns)
        if result.computed:
            self.policy.ran(result.computed, result.model_seconds, interactive=bool(batch.interactive))
        self._sample()
        try:
            if result.expired:
                self.observer.dropped_expired(result.expired)
            if result.computed:
                self.observer.batch_done(result.computed, result.model_seconds)
        except Exception:
            log.exception("the batch observer failed; the answers were written")

    def _result(self, batch: Batch, parsed: Parsed | None, batch_id: str) -> BatchResult:
        if parsed is not None:
            try:
                return self.compute(parsed, batch_id)
            except Exception:  # answer the batch anyway
                log.exception("processing a batch of %d failed", len(batch))
        return BatchResult(error_for_each(batch, BATCH_FAILED))

    def read(self, batch: Batch) -> Parsed:
        """The batch's messages, read: the images to run and the answers already decided."""
        # A withdrawn request's or a cancelled job's images have no message any more: dropped here.
        # Reading is safe to repeat, so a Redis that blips is waited for, as the answers are.
        messages = self._answer_retry.call_with_retry(
            lambda: self.queue.read_messages(batch),
            lambda exc: log.warning("reading a batch of %d failed (%s); retrying", len(batch), exc),
        )
        return parse_batch(messages, time.time(), self._input_shape)

    def compute(self, parsed: Parsed, batch_id: str) -> BatchResult:
        """The answers for a batch, computed in one model call."""
        started = time.time()
        requests = parsed.requests
        decided = BatchResult(
            parsed.answers,
            expired=parsed.expired,
            expired_jobs=tuple(parsed.expired_jobs),
            expired_requests=tuple(parsed.expired_requests),
        )
        if not requests:
            return decided
        model_started = time.perf_counter()
        try:
            with tracing.span("model", {"inference.batch.size": len(requests)}):
                pixels = np.stack([r.pixels for r in requests])
                probabilities = self.classifier.predict(pixels)
                # The models' prediction dicts are the wire's Prediction (the models know no wire record).
                ranked = cast(
                    list[list[Prediction]],
                    self.classifier.top_k(probabilities, max(r.top_k for r in requests)),
                )
        except Exception:
            log.exception("model failed on batch %s of %d", batch_id, len(requests))
            failed = [Answer.failed(r.reply, 500, MODEL_FAILED) for r in requests]
            return replace(decided, answers=parsed.answers + failed)
        model_seconds = time.perf_counter() - model_started
        if self.calibration is not None:
            self._to_sample = pixels
        model_ms = round(model_seconds * 1000, 2)
        log.debug("batch %s: %d images in %.1f ms", batch_id, len(requests), model_ms)
        info = BatchInfo(batch_id, len(requests), self.worker_id)
        batch_trace = tracing.traceparent() or ""  # the batch span: the web tier links back to it
        answers = parsed.answers + [
            Answer(
                request.reply_to,
                request.index,
                request.lane,
                200,
                predictions=predictions[: request.top_k],
                model=self._model,
                batch=info,
                queued_ms=round((started - request.queued_at) * 1000, 2),
                model_ms=model_ms,
                batch_trace=batch_trace,
            )
            for request, predictions in zip(requests, ranked)
        ]
        return replace(decided, answers=answers, computed=len(requests), model_seconds=model_seconds)

    def _sample(self) -> None:
        """The last batch's images to calibrate INT8 on, while the sampler wants them: after its
        answers are written (starting an attempt copies the sample), and never costing one."""
        calibration, pixels, self._to_sample = self.calibration, self._to_sample, None
        if calibration is None or pixels is None or not calibration.sampling:
            return
        try:
            calibration.offer(pixels)
        except Exception:
            log.exception("sampling served images for INT8 failed; no INT8 from traffic")
            self._stop_calibrating()

    def _stop_calibrating(self) -> None:
        """INT8 from traffic is over (switched, or given up): drop the sampler and the quantizer,
        which holds the unquantized model's graph."""
        if self.calibration is not None:
            self.calibration.close()
        self.calibration = None
        self.classifier.traffic_int8 = None

    def _write(self, result: BatchResult) -> int | None:
        """Write the answers (and mark jobs whose images expired), retrying while Redis is away:
        the clients may still be waiting. Returns how many were written (None: not known)."""

        def failed(exc: Exception) -> None:
            log.warning("writing %d answers failed (%s); retrying", len(result.answers), exc)

        try:
            return self._answer_retry.call_with_retry(
                lambda: self.queue.answer(
                    self.worker_id,
                    result.answers,
                    self.settings.result_ttl,
                    self.settings.job_ttl,
                    expired_jobs=result.expired_jobs,
                    expired_requests=result.expired_requests,
                ),
                failed,
            )
        except NotReplicated as exc:  # written on the primary; a second failure now could lose them
            log.warning("%s: written on the primary only", exc)
        except redis.RedisError as exc:
            log.error("could not write %d answers: %s", len(result.answers), exc)
        return None
