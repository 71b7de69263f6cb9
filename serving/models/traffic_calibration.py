"""INT8 calibrated on the traffic itself, for a model nobody calibrated.

A worker that serves f32/bf16 with ``--calibrate-on-traffic N`` keeps a uniform random sample
(a reservoir, Vitter's algorithm R) of N distinct preprocessed images it has served, in its own
memory only: nothing of it goes to Redis or disk (the INT8 model it leads to is cached on disk,
as a converted model is). Once the reservoir is full a background thread quantizes on it, one
image in three held out for the accuracy guard (``TrafficQuantizer`` in runtimes.py), and the
worker switches to INT8 between two batches (``ready``), so no request is in a model call when it
changes. An attempt takes the sample, and the reservoir starts over on images it has not seen: a
refused attempt is tried again on a fresh sample after twice as many images, at most ``ATTEMPTS``
times; then f32/bf16 serves on and the memory is given back. INT8 that passes its guard but is
timed slower than what serves (``--precision auto``) ends sampling at once: another sample would
make the same model.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .int8 import CONFIDENT, GUARD_EVERY, MIN_CONFIDENT
from .runtimes import CompiledModel, Int8Attempt

log = logging.getLogger(__name__)

ATTEMPTS = 3  # quantizations tried on traffic before f32/bf16 serves for good
# Too few images leave too few confident guard images for the guard to judge INT8 at all.
MIN_TRAFFIC_IMAGES = GUARD_EVERY * MIN_CONFIDENT
MAX_TRAFFIC_IMAGES = 5000  # 750 MB of 224 x 224 images: more buys the calibration nothing


class Reservoir:
    """A uniform sample of at most ``capacity`` distinct images from a stream: a repeated image
    (a client sending the same photo, a load test) counts once, or it would fill the sample.
    ``take`` hands the sample over and starts a new one, of images never seen before."""

    def __init__(self, capacity: int, shape: tuple[int, ...], seed: int | None = None):
        self.capacity = capacity
        self.images = np.empty((capacity, *shape), np.uint8)
        self.seen = 0  # distinct images offered so far, over every sample
        self._since_take = 0  # distinct images offered to the sample in hand
        self._digests: set[bytes] = set()  # bounded: sampling ends after ATTEMPTS samples
        self._rng = np.random.default_rng(seed)

    def offer(self, batch: np.ndarray) -> None:
        for image in batch:
            digest = hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=8).digest()
            if digest in self._digests:
                continue
            self._digests.add(digest)
            since = self._since_take
            slot = since if since < self.capacity else int(self._rng.integers(0, since + 1))
            if slot < self.capacity:
                self.images[slot] = image
            self._since_take += 1
            self.seen += 1

    def take(self) -> np.ndarray:
        """The sample in hand; the next one holds only images offered from now on."""
        sample = self.images[: min(self._since_take, self.capacity)]
        self.images = np.empty_like(self.images)
        self._since_take = 0
        return sample


@dataclass(frozen=True)
class Switch:
    """INT8 ready to serve: the compiled model and the seconds of each batch size, measured warm."""

    model: CompiledModel
    batch_seconds: dict[int, float]
    reason: str


class TrafficCalibration:
    """Sampling, the background quantization and its hand-over to the worker. ``offer`` and
    ``ready`` are called by the worker's thread between batches; ``quantize`` runs on another."""

    def __init__(
        self,
        quantize: Callable[[np.ndarray], Int8Attempt],  # runtimes.TrafficQuantizer
        capacity: int,
        input_shape: tuple[int, int, int],
        batch_sizes: Sequence[int],
        name: str = "the model",
        seed: int | None = None,
    ):
        self._quantize = quantize
        self._batch_sizes = sorted(set(batch_sizes))
        self.name = name
        self._input_shape = input_shape
        self.reservoir: Reservoir | None = Reservoir(capacity, input_shape, seed)
        self.next_attempt_at = capacity  # distinct images seen before the next quantization
        self.attempts = 0
        self.reasons: list[str] = []  # why each refused attempt was refused
        self._thread: threading.Thread | None = None
        self._ready: Switch | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()  # the worker stopped: no switch, whatever ends later
        megabytes = self.reservoir.images.nbytes / 2**20
        log.info(
            "INT8 from traffic for %s: sampling %d distinct served images (%.0f MB, in this "
            "worker's memory only), then quantizing in the background",
            name,
            capacity,
            megabytes,
        )

    @property
    def sampling(self) -> bool:
        """Still collecting images, or quantizing on them (False once INT8 is handed over or
        refused for good)."""
        return self.reservoir is not None

    def offer(self, pixels: np.ndarray) -> None:
        """A served batch's images (uint8 n, h, w, 3). Cheap: a hash and, for some, a copy."""
        reservoir = self.reservoir
        if reservoir is None:
            return
        reservoir.offer(pixels)
        busy = self._thread is not None and self._thread.is_alive()
        if not busy and reservoir.seen >= self.next_attempt_at and not self._closed.is_set():
            self.attempts += 1
            self.next_attempt_at = 2 * reservoir.seen
            self._thread = threading.Thread(
                target=self._attempt,
                args=(reservoir.take(), reservoir.seen),
                name="int8-calibration",
                daemon=True,
            )
            self._thread.start()

    def ready(self) -> Switch | None:
        """The INT8 model, once, when it is ready to switch to."""
        with self._lock:
            ready, self._ready = self._ready, None
        return ready

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """The worker stops or has switched: sample no more and never hand a model over. An
        attempt in progress runs to its end (NNCF cannot be interrupted) and is then dropped;
        its INT8 model is still cached when its guard passed."""
        with self._lock:
            self._closed.set()
            self._ready = None
        self.reservoir = None

    def wait(self, timeout: float) -> bool:
        """Until the attempt in progress has ended (tests, benchmarks); False: still running."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    def _attempt(self, images: np.ndarray, seen: int) -> None:
        started = time.perf_counter()
        log.info(
            "INT8 from traffic for %s: quantizing on a sample of %d of %d distinct served images "
            "(%d held out for the guard; attempt %d of %d)",
            self.name,
            len(images),
            seen,
            len(images) // GUARD_EVERY,
            self.attempts,
            ATTEMPTS,
        )
        try:
            attempt = self._quantize(images)
            switch = None
            if attempt.model is not None and not self._closed.is_set():
                switch = self._warmed(attempt.model, attempt.reason)
            reason, final = attempt.reason, attempt.final
        except Exception as exc:  # NNCF or OpenVINO failed: f32/bf16 serves on
            log.exception("INT8 from traffic for %s failed", self.name)
            switch, reason, final = None, f"{type(exc).__name__}: {exc}", False
        with self._lock:  # close() holds it too: a model is never handed over after it
            closed = self._closed.is_set()
            if switch is not None and not closed:
                self._ready = switch
        if closed:
            log.info("INT8 from traffic for %s ended after its worker stopped: not switched to", self.name)
            return
        if switch is not None:
            self.reservoir = None  # after the hand-over (the worker reads them in this order)
            log.info(
                "INT8 from traffic for %s ready after %.1f s: %s",
                self.name,
                time.perf_counter() - started,
                reason,
            )
            return
        self.reasons.append(reason)
        if final:  # another sample would make the same model
            self.reservoir = None
            log.info("INT8 from traffic for %s: %s; serving unquantized from now on", self.name, reason)
        elif self.attempts >= ATTEMPTS:
            self.reservoir = None
            log.warning(
                "INT8 from traffic for %s refused %d times (last: %s); serving unquantized from now on",
                self.name,
                self.attempts,
                reason,
            )
        else:
            log.warning(
                "INT8 from traffic for %s refused (%s); trying again after %d distinct images "
                "(images f32 is >= %.1f sure of decide the guard)",
                self.name,
                reason,
                self.next_attempt_at,
                CONFIDENT,
            )

    def _warmed(self, model: CompiledModel, reason: str) -> Switch:
        """Every batch size run twice before the switch: the first call of a shape prepares
        its kernels, the second says what the batch costs (the batching policy needs it)."""
        seconds = {}
        for size in self._batch_sizes:
            blank = np.zeros((size, *self._input_shape), np.uint8)
            model.call(blank)
            started = time.perf_counter()
            model.call(blank)
            seconds[size] = time.perf_counter() - started
        return Switch(model, seconds, reason)
