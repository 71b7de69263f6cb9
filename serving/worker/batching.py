"""The batching policy, in one place: when a batch is ready and what it may carry.

When: a worker blocks on the doorbell while both lanes are empty, then takes what is queued;
while a batch holding interactive images is not full it waits up to the batching window for more
(``--batch-wait-ms``, or a tenth of the last batch's model time under load), ending as soon as
the batch is full. Each take is one atomic Lua step (``RedisQueue.take``).

What: how much bulk (job) work a batch may carry follows what the model's batches cost.

On a GPU a batch of 8 costs about what a batch of 1 does, so bulk images fill any room for free.
On a CPU a batch costs about in proportion to its size: a bulk image in an interactive batch
delays the interactive images, and a large bulk-only batch makes an interactive request that
arrives meanwhile wait for all of it. So while interactive requests are coming in, the worker
keeps bulk work to what costs the interactive images little:

- a bulk-only batch may take as long as BULK_ALONE x a one-image batch;
- bulk images may join n interactive ones while the batch costs at most TOP_UP x a batch of n.

and before a bulk-only batch starts, the worker gives interactive work a short grace (a fifth of
a one-image batch): a client answered a moment ago is usually sending its next image, and
catching it spares it a whole bulk batch of waiting.

When no interactive request has come for QUIET_SECONDS, bulk batches fill up: the first
interactive request after a quiet spell waits for at most one batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from serving.queue import EMPTY, Batch, RedisQueue
from serving.queue.messages import BULK

BULK_ALONE = 1.5
TOP_UP = 1.25
GRACE_SHARE = 0.2  # of a one-image batch's time
LONGEST_GRACE = 0.05
QUIET_SECONDS = 5.0
FOLLOW = 0.2  # weight of each new batch's time in the running estimate
# Under load the batching window may grow to this share of the last batch's model time: clients
# answered by one batch send their next images a few ms later, and waiting 40 ms to fill a
# 400 ms batch costs little next to running a batch of one.
WINDOW_SHARE_OF_BATCH = 0.1
# A window is waited out in steps this long, taking what arrived after each, so it ends as soon
# as the batch is full (Redis resolves blocking timeouts only to 1/hz, 100 ms by default).
WINDOW_STEP_SECONDS = 0.001


class BatchCosts:
    """Seconds per model call by batch size: measured at warm-up, then followed batch by batch."""

    def __init__(self, batch_size: int, measured: dict[int, float] | None = None):
        self.batch_size = batch_size
        self.seconds = dict(measured or {})
        self.last_interactive = float("-inf")

    def observe(self, size: int, seconds: float, interactive: bool) -> None:
        if interactive:
            self.last_interactive = time.monotonic()
        known = self.seconds.get(size)
        self.seconds[size] = seconds if known is None else (1 - FOLLOW) * known + FOLLOW * seconds

    def cost(self, size: int) -> float:
        """The batch's time, from the nearest measured size when this one was never seen."""
        if size in self.seconds:
            return self.seconds[size]
        nearest = min(self.seconds, key=lambda known: abs(known - size))
        return self.seconds[nearest] * size / nearest

    def interactive_recently(self) -> bool:
        return time.monotonic() - self.last_interactive <= QUIET_SECONDS

    def interactive_grace(self) -> float:
        """Seconds to wait for interactive work before a bulk-only batch (0 while it is quiet)."""
        if not self.seconds or not self.interactive_recently():
            return 0.0
        return min(LONGEST_GRACE, GRACE_SHARE * self.cost(1))

    def bulk_caps(self) -> list[int]:
        """The most bulk images a batch holding n interactive ones may take, for n = 0..batch_size."""
        full = [self.batch_size - n for n in range(self.batch_size + 1)]
        if not self.seconds or not self.interactive_recently():
            return full
        alone = max(
            [n for n in range(1, self.batch_size + 1) if self.cost(n) <= BULK_ALONE * self.cost(1)], default=1
        )
        caps = [alone]
        for interactive in range(1, self.batch_size + 1):
            allowed = TOP_UP * self.cost(interactive)
            caps.append(
                max(
                    (
                        extra
                        for extra in range(self.batch_size - interactive + 1)
                        if self.cost(interactive + extra) <= allowed
                    ),
                    default=0,
                )
            )
        return caps


class BatchPolicy:
    """When a worker's next batch is ready and what it may carry, from the costs it has seen."""

    def __init__(self, batch_size: int, batch_wait_seconds: float, measured: dict[int, float] | None = None):
        self.batch_size = batch_size
        self.batch_wait_seconds = batch_wait_seconds
        self.costs = BatchCosts(batch_size, measured)
        self._last_size = batch_size  # start as under load: wait the window
        self._last_model_seconds = 0.0
        # Whether work may be queued that rang no doorbell this worker can hear: at start (a ring
        # expires after 60 s), and after a full batch. After a batch with room left the take
        # found the lanes empty, or it rang the doorbell for what it left (bulk over its cap),
        # so the worker blocks on the doorbell at once instead of taking first: one round trip
        # less per batch when requests come one at a time.
        self._look_first = True
        self.first_taken_ns = 0  # epoch ns when the last batch's first messages were taken

    def window(self) -> float:
        """The batching window: the configured wait, or a tenth of the last batch's model time
        when that is longer; skipped right after a lone request, since when requests come one at
        a time (c = 1) the window only adds its delay."""
        if self._last_size <= 1:
            return 0.0
        return max(self.batch_wait_seconds, WINDOW_SHARE_OF_BATCH * self._last_model_seconds)

    def took(self, size: int) -> None:
        self._last_size = size

    def ran(self, size: int, seconds: float, interactive: bool) -> None:
        """A model call of ``size`` images took ``seconds``."""
        self._last_model_seconds = seconds
        self.costs.observe(size, seconds, interactive)

    def remeasured(self, seconds: dict[int, float]) -> None:
        """The model changed (INT8 from traffic): follow its costs from these, measured warm."""
        self.costs.seconds = dict(seconds)

    def next_batch(self, queue: RedisQueue, worker_id: str, idle_timeout: float) -> Batch:
        """Take the next batch; blocks up to ``idle_timeout`` while both lanes are empty."""
        caps = self.costs.bulk_caps()
        batch = first_take(
            queue,
            worker_id,
            self.batch_size,
            idle_timeout,
            caps,
            self.costs.interactive_grace(),
            look_first=self._look_first,
        )
        self.first_taken_ns = time.time_ns()  # where the batch's assembly begins (its trace)
        batch = fill_window(queue, worker_id, batch, self.batch_size, self.window(), caps)
        self._look_first = len(batch) >= self.batch_size
        return batch


def take_batch(
    queue: RedisQueue,
    worker_id: str,
    batch_size: int,
    window: float,
    idle_timeout: float,
    bulk_caps: Sequence[int] | None = None,
    grace: float = 0.0,
) -> Batch:
    """Up to ``batch_size`` messages; blocks up to ``idle_timeout`` while both lanes are empty.

    Before a batch of bulk images only, waits up to ``grace`` seconds for interactive ones.
    When a batch holding interactive images is not full, waits up to ``window`` seconds for
    more (the batching delay of Triton and TF Serving), ending as soon as the batch is full.
    Bulk images never wait: they only fill room that is there.
    """
    batch = first_take(queue, worker_id, batch_size, idle_timeout, bulk_caps, grace)
    return fill_window(queue, worker_id, batch, batch_size, window, bulk_caps)


def first_take(
    queue: RedisQueue,
    worker_id: str,
    batch_size: int,
    idle_timeout: float,
    bulk_caps: Sequence[int] | None = None,
    grace: float = 0.0,
    *,
    look_first: bool = True,
) -> Batch:
    """What is queued now, or what arrives within ``idle_timeout`` (blocking on the doorbell).
    ``look_first=False``: block first, when queued work would have rung; the lanes are still
    looked at once the block ends, rung or not (a ring can expire or go to another worker)."""
    if look_first:
        batch = _take_now(queue, worker_id, batch_size, bulk_caps, grace)
        if batch or not queue.wait_for_work(idle_timeout):
            return batch
    else:
        queue.wait_for_work(idle_timeout)
    return _take_now(queue, worker_id, batch_size, bulk_caps, grace)


def fill_window(
    queue: RedisQueue,
    worker_id: str,
    batch: Batch,
    batch_size: int,
    window: float,
    bulk_caps: Sequence[int] | None = None,
) -> Batch:
    """Top up a batch holding interactive images with what arrives within ``window`` seconds,
    ending as soon as it is full."""
    window_ends = time.monotonic() + window
    while batch.interactive and len(batch) < batch_size and (left := window_ends - time.monotonic()) > 0:
        time.sleep(min(WINDOW_STEP_SECONDS, left))
        batch = queue.take(worker_id, batch_size - len(batch), batch, bulk_caps)
    return batch


def _take_now(
    queue: RedisQueue, worker_id: str, room: int, bulk_caps: Sequence[int] | None, grace: float
) -> Batch:
    if grace > 0:
        interactive_only = [0] * (room + 1)
        gives_up = time.monotonic() + grace
        batch = queue.take(worker_id, room, EMPTY, interactive_only)
        while not batch and (bulk_queued := queue.depth(BULK)) and (left := gives_up - time.monotonic()) > 0:
            time.sleep(min(WINDOW_STEP_SECONDS, left))
            batch = queue.take(worker_id, room, EMPTY, interactive_only)
        if batch or not bulk_queued:  # both lanes were empty: a second take would find nothing
            return batch
    return queue.take(worker_id, room, EMPTY, bulk_caps)
