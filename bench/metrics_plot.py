"""python -m bench.metrics_plot: the dashboard's panels (deploy/grafana/inference.json) drawn
with matplotlib from a short run, for the README where no Grafana is at hand.

    python -m bench.metrics_plot --out docs/metrics.png

One server (web + worker, the bundled EfficientNet-Lite0 unless --model says otherwise) on a
private Redis with a small interactive queue bound, so the heaviest phase meets 503s; /metrics is
scraped every half second while clients come at 1, then 8, then 32 at once, with jobs sent
alongside. Rates and quantiles are computed from the scraped counters and histogram buckets the
way PromQL's rate() and histogram_quantile() do.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from harness.launch import on_queue, python_server
from serving.queue.embedded import EmbeddedRedis
from stress_test import run_load

from .__main__ import DEFAULT_IMAGE, RESULTS, load_image

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
PHASES = ((1, 8.0), (8, 10.0), (32, 10.0))  # (concurrent clients, seconds)


def scrape(url: str) -> Samples:
    text = requests.get(url + "/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class Scraper(threading.Thread):
    def __init__(self, url: str, every: float = 0.5):
        super().__init__(daemon=True)
        self.url, self.every = url, every
        self.series: list[tuple[float, Samples]] = []
        self.stopping = threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        while not self.stopping.wait(self.every):
            try:
                self.series.append((time.monotonic() - self.started_at, scrape(self.url)))
            except requests.RequestException:
                pass


def total(
    samples: Samples, name: str, match: Callable[[dict[str, str]], bool] = lambda labels: True
) -> float:
    return sum(value for (n, labels), value in samples.items() if n == name and match(dict(labels)))


def rate(
    series: list[tuple[float, Samples]], name: str, window: float = 2.0, **labels: str
) -> tuple[list[float], list[float]]:
    """Per-second increase of a counter over a trailing window, as PromQL's rate()."""

    def match(have: dict[str, str]) -> bool:
        return all(have.get(key) == value for key, value in labels.items())

    times, values = [], []
    for i, (t, samples) in enumerate(series):
        j = next((k for k in range(i) if t - series[k][0] <= window), i)
        if j == i:
            continue
        t0, old = series[j]
        times.append(t)
        values.append((total(samples, name, match) - total(old, name, match)) / (t - t0))
    return times, values


def quantile(
    series: list[tuple[float, Samples]], name: str, q: float, window: float = 2.0
) -> tuple[list, list]:
    """histogram_quantile(q, rate(name_bucket[window])), summed over every other label."""
    times, values = [], []
    for i, (t, samples) in enumerate(series):
        j = next((k for k in range(i) if t - series[k][0] <= window), i)
        if j == i:
            continue
        buckets: dict[float, float] = {}
        for (n, labels), value in samples.items():
            if n == name + "_bucket":
                le = float(dict(labels)["le"])
                old = series[j][1].get((n, labels), 0.0)
                buckets[le] = buckets.get(le, 0.0) + value - old
        bounds = sorted(buckets)
        if not bounds or buckets[bounds[-1]] <= 0:
            continue
        rank, lower, below = q * buckets[bounds[-1]], 0.0, 0.0
        for bound in bounds:
            if buckets[bound] >= rank:
                upper = bound if bound != float("inf") else lower
                share = (rank - below) / (buckets[bound] - below) if buckets[bound] > below else 1.0
                times.append(t)
                values.append(lower + (upper - lower) * share)
                break
            lower, below = bound, buckets[bound]
    return times, values


def gauge(series: list[tuple[float, Samples]], name: str, **labels: str) -> tuple[list, list]:
    def match(have: dict[str, str]) -> bool:
        return all(have.get(key) == value for key, value in labels.items())

    return [t for t, _ in series], [total(samples, name, match) for _, samples in series]


def ratio(a: tuple[list, list], b: tuple[list, list]) -> tuple[list, list]:
    pairs = [(t, x / y) for t, x, y in zip(a[0], a[1], b[1]) if y > 0]
    return [t for t, _ in pairs], [v for _, v in pairs]


def send_jobs(url: str, image: bytes, stop: threading.Event) -> None:
    while not stop.wait(2.0):
        files = [("image", (f"{i}.jpg", image)) for i in range(8)]
        try:
            requests.post(url + "/jobs", files=files, timeout=10)
        except requests.RequestException:
            pass


def plot(series: list[tuple[float, Samples]], marks: list[tuple[float, str]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 3, figsize=(12, 5.6), sharex=True)
    (requests_ax, latency_ax, queue_ax), (batch_ax, model_ax, jobs_ax) = axes
    for status in ("200", "503"):
        requests_ax.plot(
            *rate(series, "inference_http_requests_total", endpoint="/predict", status=status), label=status
        )
    requests_ax.set(title="/predict requests/s by status")
    for q in (0.5, 0.99):
        t, v = quantile(series, "inference_http_request_duration_seconds", q)
        latency_ax.plot(t, [x * 1000 for x in v], label=f"p{int(q * 100)}")
    latency_ax.set(title="request latency (ms)")
    for lane in ("interactive", "bulk"):
        queue_ax.plot(*gauge(series, "inference_queue_depth", lane=lane), label=lane)
    queue_ax.plot(
        *gauge(series, "inference_queue_capacity", lane="interactive"), "k:", label="interactive bound"
    )
    queue_ax.set(title="queued images by lane")
    batch_ax.plot(
        *ratio(rate(series, "inference_batch_size_sum"), rate(series, "inference_batch_size_count")),
        label="mean",
    )
    batch_ax.set(title="images per batch", xlabel="seconds")
    t, v = ratio(rate(series, "inference_model_seconds_sum"), rate(series, "inference_model_seconds_count"))
    model_ax.plot(t, [x * 1000 for x in v], label="mean")
    model_ax.set(title="model ms per batch", xlabel="seconds")
    for status in ("done", "expired"):
        jobs_ax.plot(*gauge(series, "inference_jobs_total", status=status), label=status)
    jobs_ax.plot(*gauge(series, "inference_workers_live"), "k-", linewidth=0.8, label="workers alive")
    jobs_ax.set(title="jobs ended (total); workers alive", xlabel="seconds")
    for ax in axes.flat:
        for at, _ in marks:
            ax.axvline(at, color="grey", linewidth=0.6, linestyle="--")
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, loc="upper left")
    for at, label in marks:
        requests_ax.annotate(label, (at, 1), xycoords=("data", "axes fraction"), fontsize=7, va="top")
    figure.suptitle("The dashboard's panels from a short run (python -m bench.metrics_plot)", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=72)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--out", type=Path, default=RESULTS / "metrics.png")
    args = parser.parse_args(argv)
    image = load_image(args.image)
    redis_server = EmbeddedRedis().start()
    try:
        flags = on_queue(None, redis_server.url, "bench_metrics", "--model", args.model)
        command = ["run_keras_server.py", *flags, "--max-queue-length", "16", "--log-level", "WARNING"]
        with python_server(command, RESULTS / "logs" / "metrics_plot.log") as server:
            scraper = Scraper(server.url)
            scraper.start()
            stop_jobs = threading.Event()
            jobs = threading.Thread(target=send_jobs, args=(server.url, image, stop_jobs), daemon=True)
            marks = []
            for concurrency, seconds in PHASES:
                marks.append((time.monotonic() - scraper.started_at, f"c={concurrency}"))
                if concurrency > 1 and not jobs.is_alive():
                    jobs.start()
                ends = time.monotonic() + seconds
                while time.monotonic() < ends:
                    run_load(server.url, image, 4 * concurrency, concurrency, progress=False)
            stop_jobs.set()
            marks.append((time.monotonic() - scraper.started_at, "idle"))
            time.sleep(4)
            scraper.stopping.set()
            scraper.join()
    finally:
        redis_server.stop()
    plot(scraper.series, marks, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) from {len(scraper.series)} scrapes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
