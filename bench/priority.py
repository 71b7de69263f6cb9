"""Interactive requests while a full bulk lane drains, against the same requests with none.

2,000 bulk images are submitted as jobs, then interactive requests are sent one at a time; the
jobs are cancelled afterwards (their images are dropped unrun), so the run stays short.
"""

from __future__ import annotations

import statistics
import time

import requests

BULK_IMAGES = 2000
PER_JOB = 32


def _latencies(url: str, image: bytes, count: int) -> list[float]:
    spent = []
    with requests.Session() as session:
        for _ in range(count):
            started = time.perf_counter()
            response = session.post(
                url + "/predict", data=image, headers={"Content-Type": "image/jpeg"}, timeout=60
            )
            response.raise_for_status()
            spent.append(time.perf_counter() - started)
    return spent


def _summary(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    return {
        "requests": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
    }


def measure(url: str, image: bytes, count: int = 20, bulk_images: int = BULK_IMAGES) -> dict:
    idle = _summary(_latencies(url, image, count))
    jobs = []
    with requests.Session() as session:
        for _ in range(bulk_images // PER_JOB):
            files = [("image", (f"{i}.jpg", image)) for i in range(PER_JOB)]
            response = session.post(url + "/jobs", files=files, timeout=60)
            response.raise_for_status()
            jobs.append(response.json()["id"])
        depth_before = requests.get(url + "/readyz", timeout=10).json()
        loaded = _summary(_latencies(url, image, count))
        done = sum(session.get(f"{url}/jobs/{job}", timeout=10).json()["done"] for job in jobs)
        for job in jobs:
            session.delete(f"{url}/jobs/{job}", timeout=10)
    return {
        "bulk_images": len(jobs) * PER_JOB,
        "bulk_done_meanwhile": done,
        "idle": idle,
        "under_bulk": loaded,
        "workers": depth_before["workers"],
    }
