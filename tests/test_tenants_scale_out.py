"""Tenants across a scale-out deployment (tests/cluster.py): two gunicorn web servers with
--auth keys on one real redis-server and a model worker process. One tenant's rate is one limit
however its requests are spread; two bulk tenants share the worker half and half; a tenant's
flood of job images leaves another tenant's single requests about as fast as when idle."""

from __future__ import annotations

import signal
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from serving.tenants.registry import Limits, TenantRegistry

from .cluster import QUEUE, WebServer, assert_no_leftovers, freeze_holding, start_workers, wait_until
from .support import colour_image

pytestmark = pytest.mark.slow  # starts servers, browsers or full-size models

JOB_IMAGES = 32  # --max-images-per-request's default


@pytest.fixture
def keyed_webs(fresh):
    webs = [WebServer(f"keyed-{i}", fresh.redis_url, QUEUE, fresh.log_dir, AUTH="keys") for i in range(2)]
    try:
        yield fresh, [web.url for web in webs], TenantRegistry(fresh.client(), QUEUE)
    finally:
        for web in webs:
            web.stop()


def predict(url: str, key: str, colour: str = "red") -> requests.Response:
    return requests.post(
        url + "/predict",
        files={"image": ("i.png", colour_image(colour))},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def submit_jobs(url: str, key: str, jobs: int) -> list[str]:
    files = [("image", (f"{i}.png", colour_image("blue", seed=i))) for i in range(JOB_IMAGES)]
    ids = []
    for _ in range(jobs):
        response = requests.post(
            url + "/jobs", files=files, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


def done(url: str, key: str, ids: list[str]) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    return sum(requests.get(f"{url}/jobs/{job}", headers=headers, timeout=10).json()["done"] for job in ids)


def test_two_web_servers_enforce_one_shared_rate(keyed_webs):
    fresh, urls, registry = keyed_webs
    start_workers(fresh.worker("rated"))
    key = registry.add("metered", Limits(images_per_second=5, burst=10))
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: predict(urls[i % 2], key).status_code, range(60)))
    elapsed = time.monotonic() - started
    allowed, refused = statuses.count(200), statuses.count(429)
    print(
        f"\nshared limit: {allowed} allowed and {refused} refused of 60 in {elapsed:.1f} s over two servers"
    )
    assert allowed + refused == 60
    # Burst plus the rate over the time it took, whichever server took them; never the sum of two.
    assert 10 <= allowed <= 10 + 5 * elapsed + 1


def test_two_bulk_tenants_share_the_worker_and_a_flood_leaves_others_fast(keyed_webs):
    fresh, urls, registry = keyed_webs
    start_workers(fresh.worker("fair", "--batch-size", "8", slow=True))
    first, second, single = (registry.add(name, Limits()) for name in ("first", "second", "single"))

    def p50(count: int) -> float:
        spent = []
        for i in range(count):
            started = time.monotonic()
            assert predict(urls[i % 2], single, "green").status_code == 200
            spent.append(time.monotonic() - started)
        return statistics.median(spent)

    idle = p50(10)
    first_jobs = submit_jobs(urls[0], first, 32)  # 1,024 images queued before the second tenant's
    second_jobs = submit_jobs(urls[1], second, 32)
    start_first, start_second = done(urls[0], first, first_jobs), done(urls[1], second, second_jobs)
    under_flood = p50(10)
    wait_until(
        lambda: done(urls[1], second, second_jobs) - start_second >= 64, 120, "the second tenant to progress"
    )
    got_first = done(urls[0], first, first_jobs) - start_first
    got_second = done(urls[1], second, second_jobs) - start_second
    print(
        f"\nfair share: first tenant {got_first} and second tenant {got_second} images while both were "
        f"queued; a third tenant's /predict p50 {idle * 1000:.0f} ms idle, {under_flood * 1000:.0f} ms "
        "under 2,048 bulk images"
    )
    # First come would have given the first tenant all of it; in turn, about half each.
    assert 0.5 <= got_first / got_second <= 2.0
    assert under_flood <= 2 * idle + 0.05, (idle, under_flood)
    for url, key, ids in ((urls[0], first, first_jobs), (urls[1], second, second_jobs)):
        for job in ids:
            requests.delete(f"{url}/jobs/{job}", headers={"Authorization": f"Bearer {key}"}, timeout=10)


def test_a_worker_killed_holding_several_tenants_images_loses_none(keyed_webs):
    fresh, urls, registry = keyed_webs
    victim = fresh.worker("victim", "--batch-size", "16", "--batch-wait-ms", "2000", slow=True)
    start_workers(victim)
    tenants = {name: registry.add(name, Limits()) for name in ("north", "south")}
    jobs = {name: submit_jobs(urls[i], key, 2) for i, (name, key) in enumerate(tenants.items())}
    owners = fresh.queue().keys.owners(victim.worker_id, "bulk")

    def both_tenants() -> list[bytes]:
        held = fresh.client().lrange(owners, 0, -1)
        return held if len(set(held)) == 2 else []

    held = freeze_holding(victim, both_tenants, "a batch of both tenants")
    victim.signal(signal.SIGKILL)  # with both tenants' images in its hands, for certain
    victim.wait(10)
    survivor = fresh.worker("survivor")
    start_workers(survivor)
    for i, (name, key) in enumerate(tenants.items()):
        for job in jobs[name]:
            body = requests.get(
                f"{urls[i]}/jobs/{job}?wait=30", headers={"Authorization": f"Bearer {key}"}
            ).json()
            assert body["status"] == "done" and body["done"] == JOB_IMAGES, body
            assert [r["predictions"][0]["label"] for r in body["results"]] == ["blue"] * JOB_IMAGES
            requests.delete(f"{urls[i]}/jobs/{job}", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    print(f"\nkill -9 holding {len(held)} images of {sorted(set(held))}: every job of both tenants done")
    fresh.stop_workers()
    assert_no_leftovers(fresh)
