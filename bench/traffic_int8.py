"""python -m bench.traffic_int8: INT8 made from the traffic, measured on a live server.

One server (web + worker) serves the bundled EfficientNet-Lite0 with ``--calibrate-on-traffic``
and an empty model cache, so it starts unquantized (f32, or bf16 where the CPU has it). Clients
post distinct photos (crops and mirror images of the test photos) round and round; the worker
samples them, quantizes in the background and switches to INT8 between two batches. Printed:
requests per second before and after the switch, when it came, how many requests failed (the
goal: none), and how often INT8's top-1 on a photo is the one the unquantized model gave the
same photo (the agreement on served traffic, beside the guard's own figure).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

import orjson
import requests

from harness.launch import on_queue, python_server
from serving.models.int8 import CONFIDENT
from serving.queue.embedded import EmbeddedRedis

from .calibration_photos import write_crops


class Sent(NamedTuple):
    at: float  # monotonic, when answered
    photo: int
    status: int
    precision: str  # as the answer names it ("" when it failed)
    top1: int  # class id (-1 when it failed)
    probability: float  # of the top-1 class


def drive(
    url: str, photos: list[bytes], clients: int, stop: threading.Event
) -> tuple[list[Sent], list[threading.Thread]]:
    """Clients posting the photos round and round until ``stop``: every answer, as it comes."""
    answers: list[Sent] = []
    counter = iter(range(10**9))

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                index = next(counter) % len(photos)
                response = session.post(
                    f"{url}/predict", data=photos[index], headers={"Content-Type": "image/jpeg"}, timeout=60
                )
                ok = response.status_code == 200
                body = response.json() if ok else {}
                answers.append(
                    Sent(
                        time.monotonic(),
                        index,
                        response.status_code,
                        body["model"]["precision"] if ok else "",
                        body["predictions"][0]["class_id"] if ok else -1,
                        body["predictions"][0]["probability"] if ok else 0.0,
                    )
                )

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    return answers, threads


def measure(sample: int, clients: int, after_seconds: float, log_dir: Path) -> dict:
    folder = log_dir / "photos"
    photos = [path.read_bytes() for path in write_crops(folder, per_photo=(2 * sample) // 3)]
    redis_server = EmbeddedRedis().start()
    stop = threading.Event()
    try:
        args = [
            "run_keras_server.py",
            *on_queue(None, redis_server.url, "bench_traffic_int8"),
            "--model",
            "efficientnet_lite0",
            "--precision",
            "auto",
            "--calibrate-on-traffic",
            str(sample),
            "--model-cache",
            str(log_dir / "cache"),
            "--batch-size",
            "8",
        ]
        with python_server(args, log_dir / "traffic_int8.log") as server:
            started = time.monotonic()
            answers, threads = drive(server.url, photos, clients, stop)
            give_up = started + 900
            while time.monotonic() < give_up and not any(a.precision == "int8" for a in list(answers)):
                if sum(a.status != 200 for a in list(answers)) > 100:
                    break  # the server refuses the load: no switch to wait for
                time.sleep(0.5)
            switched = next((a.at for a in list(answers) if a.precision == "int8"), None)
            time.sleep(after_seconds if switched else 0)
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
            readyz = requests.get(f"{server.url}/readyz", timeout=10).json()
    finally:
        stop.set()
        redis_server.stop()
    return summarise(answers, started, switched, readyz, sample, clients)


def summarise(
    answers: list[Sent], started: float, switched: float | None, readyz: dict, sample: int, clients: int
) -> dict:
    before = [a for a in answers if a.precision not in ("int8", "")]
    after = [a for a in answers if a.precision == "int8"]

    def rate(rows: list[Sent]) -> float:
        if len(rows) < 20:
            return float("nan")
        rows = rows[len(rows) // 10 :]  # the first tenth warms up
        return len(rows) / max(rows[-1].at - rows[0].at, 1e-9)

    unquantized: dict[int, Sent] = {}
    for sent in before:
        unquantized.setdefault(sent.photo, sent)
    pairs = [(unquantized[a.photo], a) for a in after if a.photo in unquantized]
    agreement = statistics.mean(u.top1 == q.top1 for u, q in pairs) if pairs else float("nan")
    # As the guard counts: the photos the unquantized model is at least half sure of.
    sure = [(u, q) for u, q in pairs if u.probability >= CONFIDENT]
    sure_agreement = statistics.mean(u.top1 == q.top1 for u, q in sure) if sure else float("nan")
    return {
        "sample": sample,
        "clients": clients,
        "requests": len(answers),
        "failed": sum(a.status != 200 for a in answers),
        "started_in": before[0].precision if before else "",
        "switch_after_s": round(switched - started, 1) if switched else None,
        "rate_before": round(rate(before), 1),
        "rate_after": round(rate(after), 1),
        "speedup": round(rate(after) / rate(before), 2) if before and after else None,
        "traffic_agreement": round(agreement, 4),
        "traffic_agreement_confident": round(sure_agreement, 4),
        "photos_compared": len({u.photo for u, _ in pairs}),
        "confident_photos_compared": len({u.photo for u, _ in sure}),
        "readyz": readyz,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=300, help="--calibrate-on-traffic N")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--after-seconds", type=float, default=30.0, help="load kept on after the switch")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-traffic-int8-") as scratch:
        result = measure(args.sample, args.clients, args.after_seconds, Path(scratch))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0 if result["failed"] == 0 and result["switch_after_s"] is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
