"""A primary killed under load: the scenario the failover tests and bench/failover.py share.

Two gunicorn web servers and two worker processes (tests/cluster.py) on a Redis with replicas
(harness/redis_ha.py: Sentinel or Cluster); 16 clients send interactive requests in a loop and
a stream of one-image jobs goes in beside them; the primary that holds the queue's slot is
killed with SIGKILL; the load runs on until the service answers again, and a while longer; the
old primary comes back (as a replica) and a second, short round of load checks that nothing is
served from it. Everything is counted, against the exact answer each image must get.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from harness.redis_ha import ClusterHarness, SentinelHarness
from harness.redis_nodes import RedisProcess, wait_until
from serving.queue.connection import connect
from serving.queue.keys import QueueKeys

from .cluster import Outcome, WebServer, Worker, post_image, start_workers, tally, tinted
from .support import colour_queue

QUEUE = "failq"
CLIENTS = 16
CLIENT_TIMEOUT = 5.0  # the web tier's deadline for an interactive request (CLIENT_TIMEOUT)
HUNG_AFTER = CLIENT_TIMEOUT + 5.0  # a client that has no HTTP answer by then calls it hung
PACE = 0.25  # seconds each client waits between requests: a few hundred requests in all
JOB_EVERY = 0.15
# A heartbeat outlives a failover (about 2.5 s), so no live worker's batch is requeued by another.
WORKER_FLAGS = ("--heartbeat-ttl", "3")


@dataclass
class Timed:
    outcome: Outcome
    finished: float  # time.monotonic()


@dataclass
class Figures:
    """What a faulted run counts. 'wrong' is a 200 carrying another image's answer or another
    client's id; 'hung' a request with no HTTP answer within HUNG_AFTER."""

    requests: int = 0
    answered: int = 0
    refused_503: int = 0
    timed_out_504: int = 0
    wrong: int = 0
    hung: int = 0
    other: int = 0
    duplicated: int = 0
    jobs_sent: int = 0
    jobs_accepted: int = 0
    jobs_refused: int = 0
    jobs_lost: int = 0
    jobs_answered_twice: int = 0
    first_200_after_kill: float | None = None
    unavailable_seconds: float | None = None  # from the kill to the first 200 of a request sent after it
    failover_seconds: float = 0.0  # from the kill to the new primary being reported
    rates: dict[str, float] = field(default_factory=dict)  # answered per second: before/during/after
    after_return: str = ""  # the second round, once the old primary is back

    def line(self) -> str:
        rates = " ".join(f"{k}={v:.1f}/s" for k, v in self.rates.items())
        return (
            f"requests={self.requests} answered_right={self.answered} 503={self.refused_503} "
            f"504={self.timed_out_504} wrong={self.wrong} hung={self.hung} other={self.other} "
            f"duplicated={self.duplicated} | jobs sent={self.jobs_sent} accepted={self.jobs_accepted} "
            f"refused={self.jobs_refused} lost={self.jobs_lost} answered_twice={self.jobs_answered_twice} "
            f"| failover={self.failover_seconds:.2f}s first_200_after_kill={self.first_200_after_kill}s "
            f"unavailable={self.unavailable_seconds}s | {rates} | after the old primary came back: "
            f"{self.after_return}"
        )


class Topology:
    """What the scenario needs of a Redis with replicas."""

    url: str

    def kill_queue_primary(self) -> RedisProcess:
        raise NotImplementedError

    def wait_new_primary(self, old: RedisProcess, timeout: float) -> RedisProcess:
        raise NotImplementedError

    def bring_back(self, old: RedisProcess) -> None:
        """Start the old primary again, as it would come back from a reboot."""
        old.start()

    def wait_replica(self, old: RedisProcess, timeout: float) -> None:
        wait_until(lambda: old.role() == "slave", timeout, f"{old.name} to be a replica", interval=0.05)


class SentinelTopology(Topology):
    def __init__(self, ha: SentinelHarness):
        self.ha = ha
        self.url = ha.sentinel_url()

    def kill_queue_primary(self) -> RedisProcess:
        return self.ha.kill_primary()

    def wait_new_primary(self, old: RedisProcess, timeout: float) -> RedisProcess:
        return self.ha.wait_for_failover(old, timeout=timeout)


class ClusterTopology(Topology):
    def __init__(self, cluster: ClusterHarness):
        self.cluster = cluster
        self.url = "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in cluster.startup_nodes)

    def kill_queue_primary(self) -> RedisProcess:
        node = self.cluster.primary_for_key(QueueKeys(colour_queue(QUEUE)).tag)
        node.kill()
        return node

    def wait_new_primary(self, old: RedisProcess, timeout: float) -> RedisProcess:
        def moved() -> RedisProcess | None:
            node = self.cluster.primary_for_key(QueueKeys(colour_queue(QUEUE)).tag)
            return node if node is not old and node.role() == "master" else None

        new = wait_until(moved, timeout, "the cluster to promote a replica", interval=0.05)
        self.cluster.wait_healthy(timeout)
        return new


class Deployment:
    """Two web servers and two workers on ``topology``."""

    def __init__(self, topology: Topology, log_dir: Path, model: tuple[Path, Path]):
        self.topology = topology
        env = {"CLIENT_TIMEOUT": str(CLIENT_TIMEOUT), "HEARTBEAT_TTL": "3"}
        self.webs: list[WebServer] = []
        self.workers: list[Worker] = []
        try:
            self.webs = [WebServer(f"web{i}", topology.url, QUEUE, log_dir, **env) for i in (1, 2)]
            self.workers = start_workers(
                *(Worker(f"worker{i}", topology.url, QUEUE, model, log_dir, *WORKER_FLAGS) for i in (1, 2))
            )
            for web in self.webs:
                wait_until(lambda web=web: _status(web.url + "/readyz") == 200, 60, f"{web.name} ready")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for process in [*self.workers, *self.webs]:
            process.stop()

    def logs(self) -> dict[str, str]:
        return {process.name: process.log() for process in [*self.webs, *self.workers]}


def _status(url: str) -> int | None:
    try:
        return requests.get(url, timeout=2).status_code
    except requests.RequestException:
        return None


class Load:
    """Interactive clients and a job submitter, running until stopped."""

    def __init__(self, webs: list[WebServer], clients: int = CLIENTS, tag: str = "a"):
        self.webs = webs
        self.tag = tag
        self.stopping = threading.Event()
        self.timed: list[Timed] = []
        self.jobs: dict[str, int] = {}  # accepted job id -> image index
        self.job_statuses: list[int | None] = []
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(c,), daemon=True) for c in range(clients)]
        self.threads.append(threading.Thread(target=self._submitter, daemon=True))

    def start(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(HUNG_AFTER + 5)

    def _client(self, client: int) -> None:
        web = self.webs[client % len(self.webs)]
        n = 0
        while not self.stopping.is_set():
            index = (client * 37 + n) % 300
            started = time.monotonic()
            outcome = post_image(web.url, index, timeout=HUNG_AFTER, tag=f"{self.tag}{client}n{n}")
            outcome.seconds = started  # when it was sent (monotonic)
            with self._lock:
                self.timed.append(Timed(outcome, time.monotonic()))
            n += 1
            self.stopping.wait(PACE)

    def _submitter(self) -> None:
        n = 0
        while not self.stopping.is_set():
            index = (7 * n) % 300
            web = self.webs[n % len(self.webs)]
            try:
                response = requests.post(
                    web.url + "/jobs", files={"image": (f"{index}.png", tinted(index)[0])}, timeout=HUNG_AFTER
                )
                status: int | None = response.status_code
                if status == 202:
                    with self._lock:
                        self.jobs[response.json()["id"]] = index
            except requests.RequestException:
                status = None
            self.job_statuses.append(status)
            n += 1
            self.stopping.wait(JOB_EVERY)


def _count(figures: Figures, timed: list[Timed]) -> None:
    outcomes = [t.outcome for t in timed]
    counted = tally(outcomes)
    figures.requests += counted.sent
    figures.answered += counted.answered
    figures.refused_503 += counted.refused
    figures.timed_out_504 += counted.timed_out
    figures.wrong += counted.mixed_up
    figures.duplicated += counted.duplicated
    hung = sum(1 for o in outcomes if o.status is None)
    figures.hung += hung
    figures.other += counted.lost - hung


def job_answers(webs: list[WebServer], jobs: dict[str, int]) -> tuple[int, int]:
    """(accepted jobs not answered right, jobs answered more than once), waiting for each."""
    lost = twice = 0
    for n, (job_id, index) in enumerate(sorted(jobs.items())):
        url = webs[n % len(webs)].url + f"/jobs/{job_id}"
        body: dict = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                response = requests.get(url, params={"wait": 10}, timeout=20)
            except requests.RequestException:
                time.sleep(0.5)
                continue
            body = response.json() if response.status_code in (200, 404) else {}
            if response.status_code == 404 or body.get("status") in ("done", "failed", "expired"):
                break
        right = body.get("status") == "done" and Outcome(index, "", 200, {"success": True, **body}).correct(
            tinted(index)[1]
        )
        lost += not right
        twice += int(body.get("done", 1)) > 1
    return lost, twice


def run(
    deployment: Deployment, settle: float = 2.0, after: float = 3.0, note: Callable[[str], None] = print
) -> Figures:
    """The scenario; returns what it counted (the caller asserts)."""
    topology = deployment.topology
    figures = Figures()
    load = Load(deployment.webs).start()
    time.sleep(settle)
    old = topology.kill_queue_primary()
    killed_at = time.monotonic()  # SIGKILL sent and the process reaped: its port is closed
    note(f"killed the primary {old.name} (port {old.port})")
    new = topology.wait_new_primary(old, timeout=60)
    figures.failover_seconds = time.monotonic() - killed_at
    note(f"new primary {new.name} (port {new.port}) after {figures.failover_seconds:.2f} s")

    def back_after() -> float | None:
        """Seconds from the kill to the first 200 of a request sent after it."""
        sent_after = [
            t.finished for t in list(load.timed) if t.outcome.seconds > killed_at and t.outcome.status == 200
        ]
        return min(sent_after) - killed_at if sent_after else None

    wait_until(back_after, 30, "a 200 after the kill", interval=0.05)
    recovered_at = time.monotonic()
    time.sleep(after)
    load.stop()
    stopped_at = time.monotonic()
    timed = list(load.timed)
    figures.unavailable_seconds = round(back_after() or 0.0, 2)
    ok_after_kill = [t.finished for t in timed if t.finished > killed_at and t.outcome.status == 200]
    figures.first_200_after_kill = round(min(ok_after_kill) - killed_at, 2) if ok_after_kill else None
    windows = {
        "before": (killed_at - settle + 0.5, killed_at),
        "during": (killed_at, recovered_at),
        "after": (recovered_at, stopped_at),
    }
    for name, (start, end) in windows.items():
        answered = sum(1 for t in timed if start <= t.finished < end and t.outcome.status == 200)
        figures.rates[name] = answered / max(end - start, 1e-3)
    _count(figures, timed)
    figures.jobs_sent = len(load.job_statuses)
    figures.jobs_accepted = len(load.jobs)
    figures.jobs_refused = sum(1 for s in load.job_statuses if s == 503)

    # The old primary comes back: while it still calls itself a primary nothing may be written to
    # it or block on it; then it is a replica, and a second round of load is served as before.
    topology.bring_back(old)
    written_to_old = _watch_old_primary(old)
    topology.wait_replica(old, timeout=60)
    second = Load(deployment.webs, clients=8, tag="b").start()
    time.sleep(2.0)
    second.stop()
    again = tally([t.outcome for t in second.timed])
    _count(figures, second.timed)
    figures.jobs_sent += len(second.job_statuses)
    figures.jobs_accepted += len(second.jobs)
    figures.jobs_refused += sum(1 for s in second.job_statuses if s == 503)
    lost, twice = job_answers(deployment.webs, {**load.jobs, **second.jobs})
    figures.jobs_lost, figures.jobs_answered_twice = lost, twice
    figures.after_return = f"{again} written_to_old_while_primary={written_to_old}"
    note(figures.line())
    return figures


def _watch_old_primary(old: RedisProcess, timeout: float = 30.0) -> int:
    """While the restarted old primary still says it is a primary: keys written to it, plus
    clients blocked on it (a worker or web server that found it). Returns the most seen."""
    worst = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client = connect(f"redis://127.0.0.1:{old.port}/0", 1.0)
            if old.role() != "master":
                return worst
            blocked = [
                c for c in client.client_list() if c.get("cmd") in ("blpop", "blmove", "evalsha", "eval")
            ]
            worst = max(worst, int(client.dbsize()) + len(blocked))
        except Exception:  # noqa: BLE001 - still starting, or just demoted
            pass
        time.sleep(0.1)
    return worst
