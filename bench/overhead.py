"""What the server adds to one request at c = 1, measured against its own model time.

The raw single-image latency and the server's c = 1 latency are taken minutes apart on a
shared machine; the model time each answer reports (timings_ms.model) was taken in the same
request, so latency minus model time is the pipeline's own cost, free of that drift.
"""

from __future__ import annotations

import statistics
import time

import requests


def measure(url: str, image: bytes, count: int = 20) -> dict:
    overheads, models = [], []
    with requests.Session() as session:
        for _ in range(count):
            started = time.perf_counter()
            response = session.post(url + "/predict", files={"image": ("image.jpg", image)}, timeout=60)
            elapsed_ms = (time.perf_counter() - started) * 1000
            if response.status_code != 200:
                continue
            timings = response.json()["timings_ms"]
            models.append(timings["model"])
            overheads.append(elapsed_ms - timings["model"])
    if not overheads:
        raise RuntimeError("no request succeeded while measuring the c=1 overhead")
    return {
        "requests": len(overheads),
        "model_ms_p50": round(statistics.median(models), 1),
        "overhead_ms_p50": round(statistics.median(overheads), 1),
        "overhead_ms_max": round(max(overheads), 1),
    }
