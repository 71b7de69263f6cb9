"""How much bulk (job) work a batch may carry, from what the model's batches cost.

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

BULK_ALONE = 1.5
TOP_UP = 1.25
GRACE_SHARE = 0.2  # of a one-image batch's time
LONGEST_GRACE = 0.05
QUIET_SECONDS = 5.0
FOLLOW = 0.2  # weight of each new batch's time in the running estimate


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
