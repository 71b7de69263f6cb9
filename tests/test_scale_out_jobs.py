"""Jobs through the scale-out deployment (tests/cluster.py): a worker killed mid-batch, and a job
submitted through one web server and followed through the other."""

from __future__ import annotations

import signal

import pytest
import requests

from serving.queue.keys import QueueKeys

from .cluster import (
    QUEUE,
    Cluster,
    Outcome,
    Worker,
    assert_no_leftovers,
    freeze_holding,
    start_workers,
    tinted,
    wait_until,
)
from .support import colour_queue, leftover_keys

pytestmark = pytest.mark.slow  # starts a cluster of processes


def submit_job(url: str, indexes: list[int]) -> str:
    files = [("image", (f"{i}.png", tinted(i)[0])) for i in indexes]
    response = requests.post(url + "/jobs", files=files, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def job_is_right(body: dict, indexes: list[int]) -> bool:
    results = body.get("results") or [body]
    return (
        body.get("status") == "done"
        and len(results) == len(indexes)
        and all(
            Outcome(i, "", 200, {"success": True, **result}).correct(tinted(i)[1])
            for i, result in zip(indexes, results)
        )
    )


def held_bulk(cluster: Cluster, worker: Worker) -> int:
    return cluster.client().llen(cluster.queue().keys.processing(worker.worker_id, "bulk"))


def test_jobs_survive_a_killed_worker_and_any_web_server_answers_for_them(fresh):
    victim = fresh.worker("victim", "--batch-size", "16", slow=True)
    start_workers(victim)
    first, second = fresh.webs
    jobs = {}
    for n in range(40):  # submitted through one web server...
        indexes = [(2 * n) % 300, (2 * n + 1) % 300]
        jobs[submit_job(first.url, indexes)] = indexes
    held = freeze_holding(victim, lambda: (n := held_bulk(fresh, victim)) >= 2 and n, "2 job images")
    victim.signal(signal.SIGKILL)  # with job images in its hands, for certain
    victim.wait(10)
    start_workers(fresh.worker("survivor", "--batch-size", "16"))  # returns the dead one's batch

    def status(job_id):  # ...and followed through the other
        return requests.get(f"{second.url}/jobs/{job_id}?wait=20", timeout=30).json()

    bodies = {
        job_id: wait_until(
            lambda j=job_id: (b := status(j))["status"] in ("done", "failed") and b, 60, "the job to end"
        )
        for job_id in jobs
    }
    wrong = [job_id for job_id, body in bodies.items() if not job_is_right(body, jobs[job_id])]
    answered = int(fresh.client().hget(f"{QueueKeys(colour_queue(QUEUE)).tag}:stats", "jobs:done") or 0)
    print(
        f"\njobs with a worker killed mid-batch ({held} job images in its hands): {len(jobs)} submitted, "
        f"{len(jobs) - len(wrong)} right, {answered} counted done"
    )
    assert wrong == [] and answered == len(jobs)
    for job_id in jobs:
        assert requests.delete(f"{first.url}/jobs/{job_id}", timeout=10).json()["status"] == "deleted"
    fresh.stop_workers()
    wait_until(lambda: leftover_keys(fresh.client(), QUEUE) == [], 10, "the jobs' keys to go")
    assert_no_leftovers(fresh)
