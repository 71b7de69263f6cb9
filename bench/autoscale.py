"""KEDA's Redis list scaling, run on one machine against real worker processes and a real Redis.

KEDA's documented rule for a `redis` trigger: the workers wanted are ceil(list length /
listLength) (the largest over the triggers, one per lane), between minReplicaCount and
maxReplicaCount, looked at every pollingInterval; scaling up is immediate, scaling down waits
until fewer have been wanted for cooldownPeriod. Scaling down sends SIGTERM, as Kubernetes does:
a worker answers the batch in hand, then exits.

    python -m bench --autoscale        # prints the timeline of a burst: depth, workers, answered/s
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from harness.launch import server_command
from harness.processes import ChildProcess
from serving.queue import RedisQueue
from serving.queue.messages import LANES


@dataclass
class ScalingRule:
    list_length: int  # images per worker (the ScaledObject's listLength: the batch size)
    min_replicas: int = 0
    max_replicas: int = 4
    polling_seconds: float = 1.0
    cooldown_seconds: float = 5.0

    def desired(self, depths: list[int]) -> int:
        wanted = max(math.ceil(depth / self.list_length) for depth in depths)
        return max(self.min_replicas, min(self.max_replicas, wanted))


@dataclass
class Moment:
    seconds: float
    depth: int
    workers: int
    answered: int


@dataclass
class Autoscaler:
    """Scales worker processes as KEDA would, in a thread, recording a timeline."""

    queue: RedisQueue
    rule: ScalingRule
    start_worker: Callable[[int], ChildProcess]
    answered: Callable[[], int] = lambda: 0
    workers: list[ChildProcess] = field(default_factory=list)
    timeline: list[Moment] = field(default_factory=list)
    peak: int = 0

    def __post_init__(self):
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="autoscaler", daemon=True)
        self._started = time.monotonic()
        self._lower_since: float | None = None
        self._count = 0

    def start(self) -> Autoscaler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=30)
        self._scale_to(0, force=True)

    def _run(self) -> None:
        while not self._stopping.is_set():
            depths = [self.queue.depth(lane) for lane in LANES]
            wanted = self.rule.desired(depths)
            self.workers = [worker for worker in self.workers if worker.alive()]
            if wanted > len(self.workers):
                self._lower_since = None
                self._scale_to(wanted)
            elif wanted < len(self.workers):
                self._lower_since = self._lower_since or time.monotonic()
                if time.monotonic() - self._lower_since >= self.rule.cooldown_seconds:
                    self._scale_to(wanted)
                    self._lower_since = None
            else:
                self._lower_since = None
            self.peak = max(self.peak, len(self.workers))
            self.timeline.append(
                Moment(
                    round(time.monotonic() - self._started, 1),
                    sum(depths),
                    len(self.workers),
                    self.answered(),
                )
            )
            self._stopping.wait(self.rule.polling_seconds)

    def _scale_to(self, count: int, force: bool = False) -> None:
        while len(self.workers) < count:
            self._count += 1
            self.workers.append(self.start_worker(self._count))
        while len(self.workers) > count:
            worker = self.workers.pop()
            worker.signal(signal.SIGTERM)  # as Kubernetes does on scale-down
            if force:
                worker.stop(timeout=30)


def worker_process(args: list[str], log_dir, number: int) -> ChildProcess:
    return ChildProcess(
        server_command("--role", "worker", *args),
        name=f"autoscaled-worker-{number}",
        log_path=log_dir / f"autoscaled-worker-{number}.log",
    ).start()


def format_timeline(timeline: list[Moment]) -> str:
    lines = [f"{'t s':>6}{'queued':>8}{'workers':>9}{'answered/s':>12}"]
    previous = None
    for moment in timeline:
        rate = (
            0.0
            if previous is None
            else (moment.answered - previous.answered) / max(moment.seconds - previous.seconds, 1e-9)
        )
        lines.append(f"{moment.seconds:>6.1f}{moment.depth:>8}{moment.workers:>9}{rate:>12.1f}")
        previous = moment
    return "\n".join(lines)


def images_computed(queue: RedisQueue) -> Callable[[], int]:
    """Images the workers have run, from the batch counts they write to Redis."""
    return lambda: int(float(queue.redis.hget(queue.keys.stats, "batch_size_sum") or 0))


def publish_model(worker: ChildProcess, queue: RedisQueue, timeout: float = 180) -> None:
    """Run one worker until it has said what it serves, then stop it: the deployment's first start.
    Afterwards web servers queue images for that model while no worker runs (scaled to zero)."""
    from harness.processes import wait_until

    wait_until(
        lambda: queue.last_model() is not None and queue.live_workers(),
        timeout,
        "a worker to publish its model",
        worker.check_alive,
    )
    worker.stop(timeout=30)
