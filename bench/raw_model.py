"""The physical limit: the served model's call in-process on one runtime, no HTTP, no Redis.

Run as ``python -m bench.raw_model --model resnet50 --runtime openvino --precision bf16`` (a child
process, so its threads are gone before the servers are measured); prints one JSON line. The
precision in it is the one the runtime really used (a CPU without BF16 runs f32).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import orjson


def time_calls(predict, batch: np.ndarray, min_seconds: float, min_calls: int) -> list[float]:
    """Seconds per call of ``predict(batch)``."""
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        predict(batch)
        times.append(time.perf_counter() - t0)
    return times


def measure(
    model: str,
    weights: str,
    runtime: str,
    precision: str,
    threads: int,
    batch_sizes: list[int],
    min_seconds: float,
    rounds: int = 3,
    calibration_dir: str | None = None,
) -> dict:
    """Seconds per call by batch size, over interleaved rounds so that a burst of load from
    elsewhere on a shared machine spreads over every size instead of hitting one."""
    from serving.models import RuntimeOptions, configure_tensorflow, load_classifier

    configure_tensorflow(threads)
    # Uncached: the conversion is not what is measured, and random weights are never cached.
    # INT8: calibrated on calibration_dir; with random weights no photo makes f32 confident, so
    # the guard is off (speed only); with real weights it guards as the server does.
    options = RuntimeOptions(
        runtime=runtime,
        precision=precision,
        threads=threads,
        calibration_dir=Path(calibration_dir) if calibration_dir else None,
        int8_min_agreement=0.0 if weights == "none" and model == "resnet50" else 0.97,
    )
    classifier = load_classifier(model, weights, options=options)
    width, height = classifier.input_size
    rng = np.random.default_rng(0)
    batches = {size: rng.integers(0, 256, (size, height, width, 3), dtype=np.uint8) for size in batch_sizes}
    times: dict[int, list[float]] = {size: [] for size in batch_sizes}
    for batch in batches.values():
        classifier.predict(batch)  # warm-up: first calls allocate
    for _ in range(rounds):
        for size, batch in batches.items():
            times[size] += time_calls(
                classifier.predict, batch, min_seconds / rounds, min_calls=2 if size > 1 else 5
            )
    rates = {size: size / statistics.median(spent) for size, spent in times.items()}
    best = max(rates, key=lambda size: rates[size])
    return {
        "model": classifier.name,
        "runtime": classifier.runtime,
        "precision": classifier.precision,
        "asked": f"{runtime} {precision}",
        "rate_by_batch": {str(k): round(v, 2) for k, v in rates.items()},
        "best_batch": best,
        "best_rate": round(rates[best], 2),
        "single_ms": round(statistics.median(times[1]) * 1000, 3),
        "int8_agreement": classifier.int8_agreement,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--runtime", default="tensorflow", choices=("tensorflow", "openvino"))
    parser.add_argument("--precision", default="f32", choices=("f32", "bf16", "int8"))
    parser.add_argument("--calibration-dir", default=None, help="images to calibrate int8 on")
    parser.add_argument("--model-threads", type=int, default=0)
    parser.add_argument("--batch-sizes", default="1,4,8,16,32")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="time spent per batch size")
    args = parser.parse_args(argv)
    sizes = sorted({int(s) for s in args.batch_sizes.split(",")} | {1})
    result = measure(
        args.model,
        args.weights,
        args.runtime,
        args.precision,
        args.model_threads,
        sizes,
        args.min_seconds,
        calibration_dir=args.calibration_dir,
    )
    print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
