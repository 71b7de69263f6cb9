"""--precision auto: time each precision the worker may serve in at the batch sizes it may run,
and choose the precision and the largest batch it should make, with the table it measured."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import openvino

TIMED_CALLS = 3  # warm calls per precision and batch size; the fastest counts (others are noise)
# What a batch costs the worker outside the model call (take, parse, answer: a few Redis round
# trips and Python), counted into every batch's time so that many small batches are not mistaken
# for as fast as a few big ones.
BATCH_OVERHEAD_SECONDS = 0.001
# A bigger batch must move at least this much more to be chosen: each of its images waits for
# the whole batch, so a batch twice the size for a few percent more is a bad trade.
RATE_TOLERANCE = 0.05


@dataclass(frozen=True)
class Choice:
    precision: str
    batch_size: int
    table: str  # what was measured, for the log

    def __str__(self) -> str:
        return f"{self.table}; serving {self.precision} in batches of up to {self.batch_size}"


def sizes_to_time(largest: int) -> list[int]:
    """1, 2, 4, ... below ``largest``, and ``largest``: on a CPU the rate changes slowly with the
    batch, so powers of two find its shape at a fraction of timing every size."""
    sizes, size = [], 1
    while size < largest:
        sizes.append(size)
        size *= 2
    return [*sizes, max(1, largest)]


def choose(
    seconds: dict[str, dict[int, float]],
    latency_budget: float = 0.0,
    tolerance: float = RATE_TOLERANCE,
    overhead: float = BATCH_OVERHEAD_SECONDS,
) -> Choice:
    """From each precision's seconds per call by batch size: the precision and batch size with
    the most images per second, preferring the smaller batch within ``tolerance`` of the best,
    among those whose call takes at most ``latency_budget`` seconds (0: no bound; batch 1 always
    qualifies, or nothing would)."""
    rates = {
        (precision, size): size / (call + overhead)
        for precision, by_size in seconds.items()
        for size, call in by_size.items()
        if size == 1 or not latency_budget or call <= latency_budget
    }
    if not rates:
        raise ValueError("nothing was measured")
    best = max(rates.values())
    precision, size = min(
        (key for key, rate in rates.items() if rate >= (1 - tolerance) * best),
        key=lambda key: (key[1], -rates[key]),
    )
    return Choice(precision, size, _table(seconds))


def time_calls(
    model: openvino.CompiledModel, input_shape: tuple[int, int, int], sizes: Sequence[int]
) -> dict[int, float]:
    """Seconds of the fastest of TIMED_CALLS warm calls of ``model``, by batch size."""
    request = model.create_infer_request()
    seconds = {}
    for size in sizes:
        batch = np.zeros((size, *input_shape), np.uint8)
        request.infer([batch])  # the first call of a shape prepares its kernels
        calls = []
        for _ in range(TIMED_CALLS):
            started = time.perf_counter()
            request.infer([batch])
            calls.append(time.perf_counter() - started)
        seconds[size] = min(calls)
    return seconds


def _table(seconds: dict[str, dict[int, float]]) -> str:
    """``f32 [1: 38.4, 8: 40.1] img/s, int8 [...]``: each precision's rate by batch size."""
    return ", ".join(
        precision
        + " ["
        + ", ".join(f"{size}: {size / call:.1f}" for size, call in sorted(by_size.items()))
        + "] img/s"
        for precision, by_size in seconds.items()
    )
