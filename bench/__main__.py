"""python -m bench: the server against the raw model on each runtime, the naive baseline and its
own pipeline, all measured in one run on one machine.

    python -m bench                 # ResNet50 (--weights none), c = 1, 8, 32, 64; several minutes
    python -m bench --quick         # smoke run: small model, few requests, about a minute
    python -m bench --autoscale     # KEDA's scaling rule against real workers, from zero and back
    python -m bench --failover      # the Redis primary killed under load: Sentinel and Cluster
    python -m bench --many-models   # two models on one web tier against one; a rollout under load

Prints a table of ratios and the goals, writes bench/results/benchmark.json and .png.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import redis
import requests

from harness.launch import on_queue, python_server
from harness.processes import ROOT
from serving.queue import RedisQueue
from serving.queue.catalogue import model_queue_name
from serving.queue.embedded import EmbeddedRedis
from stress_test import run_load

from . import goals, overhead, priority, redis_memory
from .plot import plot
from .report import table

RESULTS = ROOT / "bench" / "results"
DEFAULT_IMAGE = ROOT.parent / "shared" / "testdata" / "shuttle.jpg"
RAW_RUNTIMES = (("tensorflow", "f32"), ("openvino", "f32"), ("openvino", "bf16"))


PROBE_CLIENTS = 8


def requests_for(concurrency: int, rate: float, args) -> int:
    """Enough requests for ``args.seconds`` at ``rate``, at least two rounds of every client."""
    count = max(args.min_requests, 2 * concurrency, int(rate * args.seconds))
    return min(count, args.max_requests) if args.max_requests else count


def measure_raw(args, runtime: str, precision: str) -> dict:
    command = [
        sys.executable,
        "-m",
        "bench.raw_model",
        "--model",
        args.model,
        "--weights",
        args.weights,
        "--runtime",
        runtime,
        "--precision",
        precision,
        "--model-threads",
        str(args.model_threads),
        "--batch-sizes",
        args.raw_batch_sizes,
        "--min-seconds",
        str(args.raw_seconds),
    ]
    if precision == "int8":
        command += ["--calibration-dir", str(args.calibration_dir)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    return orjson.loads(out.strip().splitlines()[-1])


def sweep(url: str, image: bytes, concurrencies: list[int], rate: float, args, warmup: int) -> list[dict]:
    """Each load level for about ``args.seconds``: sized by ``rate``, or by what a short probe of
    the server moves when that is lower (a slow server would otherwise take minutes a level)."""
    run_load(url, image, warmup, min(warmup, 4), progress=False)  # first calls allocate
    probe = run_load(url, image, 4 * PROBE_CLIENTS, PROBE_CLIENTS, timeout=120, progress=False).summary()
    rate = min(rate, 1.5 * probe["throughput_rps"])
    rows = []
    for concurrency in concurrencies:
        count = requests_for(concurrency, rate, args)
        result = run_load(url, image, count, concurrency, timeout=120, progress=sys.stderr.isatty())
        summary = result.summary()
        print(
            f"  c={concurrency:<3} {summary['throughput_rps']:8.2f} req/s  p50 {summary['p50_ms']} ms  "
            f"p99 {summary['p99_ms']} ms  {summary['statuses']}  "
            f"client CPU {summary['client_cpu_ms']} ms/req",
            flush=True,
        )
        rows.append(summary)
    return rows


def model_flags(model: str, args) -> list[str]:
    """The model the benchmark serves, its threads, and a quiet log."""
    return [
        "--model",
        model,
        "--weights",
        args.weights,
        "--model-threads",
        str(args.model_threads),
        "--log-level",
        "WARNING",
    ]


def bench_queue(model: str) -> str:
    """The queue the benchmark's servers of ``model`` share."""
    return f"bench_{model}"


def server_args(model: str, args, redis_url: str, *flags: str) -> list[str]:
    return [
        "run_keras_server.py",
        *on_queue(None, redis_url, bench_queue(model), *model_flags(model, args)),
        *args.server_flag,
        *flags,
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default=None,
        help="model the servers and baseline run (resnet50; --quick: efficientnet_lite0)",
    )
    parser.add_argument("--weights", default="none", help="resnet50 weights (none: same compute, random)")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--null-concurrency", default="1,8,32,64")
    parser.add_argument("--seconds", type=float, default=12.0, help="target seconds per load level")
    parser.add_argument("--min-requests", type=int, default=16)
    parser.add_argument("--max-requests", type=int, default=0, help="cap per load level (0: none)")
    parser.add_argument("--model-threads", type=int, default=0)
    parser.add_argument("--raw-batch-sizes", default="1,4,8,16,32")
    parser.add_argument("--raw-seconds", type=float, default=3.0)
    parser.add_argument(
        "--calibration-dir",
        type=Path,
        default=None,
        help="photos to calibrate INT8 on: adds the raw OpenVINO int8 rate (and its agreement)",
    )
    parser.add_argument(
        "--server-flag",
        action="append",
        default=[],
        help="extra flag for run_keras_server.py, e.g. --server-flag=--batch-size=16",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--docs-plot", type=Path, default=None, help="also copy the plot here")
    parser.add_argument(
        "--autoscale",
        action="store_true",
        help="instead: a burst of 300 requests against workers scaled by KEDA's rule, from zero "
        "and back; prints the timeline",
    )
    parser.add_argument(
        "--failover",
        action="store_true",
        help="instead: the Redis primary killed under load, on Sentinel and on a Cluster; prints "
        "the failover row (rates before/during/after, unavailability, lost and doubled counts)",
    )
    parser.add_argument(
        "--many-models",
        action="store_true",
        help="instead: two (null) models on one web tier against one alone, and a rollout under "
        "load (failed requests, p99 at the switch against before)",
    )
    parser.add_argument(
        "--auth-cost",
        action="store_true",
        help="instead: the null-model pipeline with --auth none against --auth keys with limits",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: efficientnet_lite0, c = 1 and 4, a handful of requests",
    )
    args = parser.parse_args(argv)
    args.model = args.model or ("efficientnet_lite0" if args.quick else "resnet50")
    if args.quick:
        args.concurrency, args.null_concurrency = "1,4", "1,4"
        args.seconds, args.min_requests, args.raw_batch_sizes, args.raw_seconds = 0.5, 8, "1,4", 0.3
        args.max_requests = 24
    return args


def _measure_and_report(module, name: str, image: bytes, args) -> int:
    """A benchmark module's ``measure`` and ``report``: figures printed and kept as <name>.json."""
    figures = module.measure(image, args.out / "logs", quick=args.quick)
    figures["machine"] = {"cpus": os.cpu_count(), "load": _load()}
    print(module.report(figures))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    image = load_image(args.image)
    if args.autoscale:
        return run_autoscale(args, image)
    if args.many_models:
        from . import many_models

        return _measure_and_report(many_models, "many_models", image, args)
    if args.auth_cost:
        from . import auth_cost

        return _measure_and_report(auth_cost, "auth_cost", image, args)
    if args.failover:
        from .failover import run_failover

        failover_table, figures = run_failover(args.out)
        print(failover_table)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "failover.json").write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
        return 0
    started = time.monotonic()
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "load_before": _load()},
        "config": {k: str(v) for k, v in vars(args).items()},
    }

    results["raw_runtimes"] = []
    int8 = (("openvino", "int8"),) if args.calibration_dir else ()
    for runtime, precision in RAW_RUNTIMES + int8:
        print(f"raw model rate ({args.model}, {runtime} {precision}, in-process)...", flush=True)
        raw = measure_raw(args, runtime, precision)
        results["raw_runtimes"].append(raw)
        print(
            f"  ran {raw['runtime']} {raw['precision']}: best batch {raw['best_batch']}: "
            f"{raw['best_rate']} img/s; single {raw['single_ms']} ms"
            + (f"; INT8 agreement {raw['int8_agreement']}" if raw.get("int8_agreement") is not None else "")
        )

    redis_server = EmbeddedRedis().start()  # private: nobody else's keys or load in the figures
    try:
        measure_servers(args, image, redis_server.url, results)
    finally:
        redis_server.stop()
    print("Redis memory per queued image...", flush=True)
    results["redis_memory"] = redis_memory.measure(image, args.out / "logs")
    results["redis_memory_multi"] = redis_memory.measure(image, args.out / "logs", images_per_request=8)

    results["goals"] = goals.evaluate(results)
    results["machine"]["load_after"] = _load()
    results["seconds"] = round(time.monotonic() - started, 1)
    write(results, args)
    print()
    print(table(results))
    print(f"\n{results['seconds']} s; wrote {args.out / 'benchmark.json'} and {args.out / 'benchmark.png'}")
    return 0


def served_model(url: str, redis_url: str, model: str) -> dict:
    """The model, runtime and precision the server's workers report, and the largest batch
    their heartbeats carry (--precision auto chooses it by measuring)."""
    served = requests.get(url + "/readyz", timeout=10).json()["model"]
    queue_name = model_queue_name(bench_queue(model), served["name"], served["version"])
    queue = RedisQueue(redis.Redis.from_url(redis_url), queue_name)
    sizes = [heartbeat.batch_size for heartbeat in queue.live_workers().values()]
    return {**served, "batch_size": max(sizes, default=None)}


def say_served(model: dict) -> None:
    print(
        f"  serving on {model.get('runtime', '-')} {model.get('precision', '-')}, "
        f"batches of up to {model.get('batch_size') or '-'}"
    )


def measure_servers(args, image: bytes, redis_url: str, results: dict) -> None:
    logs = args.out / "logs"
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    best_raw = max(raw["best_rate"] for raw in results["raw_runtimes"])
    print("server over HTTP, default runtime...", flush=True)
    with python_server(server_args(args.model, args, redis_url), logs / "server.log") as server:
        results["server_model"] = served_model(server.url, redis_url, args.model)
        say_served(results["server_model"])
        results["server"] = sweep(server.url, image, concurrencies, best_raw, args, warmup=8)
        results["server_overhead_c1"] = overhead.measure(server.url, image, count=8 if args.quick else 24)
        print("interactive requests under a full bulk lane...", flush=True)
        results["priority"] = priority.measure(
            server.url,
            image,
            count=6 if args.quick else 20,
            bulk_images=64 if args.quick else priority.BULK_IMAGES,
        )
    if args.calibration_dir:
        measure_precisions(args, image, redis_url, results, concurrencies, best_raw)
    print("server over HTTP, --runtime tensorflow...", flush=True)
    tensorflow_server = server_args(args.model, args, redis_url, "--runtime", "tensorflow")
    with python_server(tensorflow_server, logs / "server_tensorflow.log") as server:
        results["server_tensorflow"] = sweep(server.url, image, concurrencies, best_raw, args, warmup=8)
    print("naive baseline (TensorFlow predict per request, no queue)...", flush=True)
    naive = [
        "-m",
        "bench.naive_server",
        "--model",
        args.model,
        "--weights",
        args.weights,
        "--model-threads",
        str(args.model_threads),
    ]
    with python_server(naive, logs / "baseline.log") as server:
        results["baseline"] = sweep(server.url, image, concurrencies, best_raw, args, warmup=4)
    print("null-model pipeline (web + Redis + batching alone)...", flush=True)
    null_rate = 20 * best_raw  # the pipeline should manage 10x the model; the probe sizes it
    with python_server(server_args("null", args, redis_url), logs / "null_server.log") as server:
        null_concurrencies = [int(c) for c in args.null_concurrency.split(",")]
        results["null_pipeline"] = sweep(server.url, image, null_concurrencies, null_rate, args, warmup=8)
        moved = max(row["throughput_rps"] for row in results["null_pipeline"])
        results["multi_image"] = multi_image(server.url, image, moved, args)


def measure_precisions(
    args, image: bytes, redis_url: str, results: dict, concurrencies: list[int], best_raw: float
) -> None:
    """The served INT8 path: the server calibrated on --calibration-dir (precision auto: INT8 if
    its guard passes and it is the fastest here), and the same server forced to f32."""
    logs = args.out / "logs"
    int8_flags = ["--calibration-dir", str(args.calibration_dir)]
    if args.model == "resnet50" and args.weights == "none":
        # Random weights: no image makes f32 confident, so the guard cannot judge.
        int8_flags += ["--int8-min-agreement", "0"]
    for name, flags in (("server_int8", int8_flags), ("server_f32", ["--precision", "f32"])):
        print(f"server over HTTP, {' '.join(flags)}...", flush=True)
        with python_server(server_args(args.model, args, redis_url, *flags), logs / f"{name}.log") as server:
            results[f"{name}_model"] = served_model(server.url, redis_url, args.model)
            say_served(results[f"{name}_model"])
            results[name] = sweep(server.url, image, concurrencies, best_raw, args, warmup=8)


def multi_image(url: str, image: bytes, rate: float, args) -> dict:
    """The web tier's work per image: 64 images in flight as 64 single-image requests, then as 8
    requests of 8 images (the null model, so the pipeline is all that is measured)."""
    rows = {}
    for per_request, clients in ((1, 64), (8, 8)):
        count = max(2 * clients, int(rate * args.seconds / per_request))
        if args.max_requests:
            count = min(count, args.max_requests)
        summary = run_load(
            url, image, count, clients, timeout=120, progress=False, images_per_request=per_request
        ).summary()
        summary["images_per_second"] = round(summary["throughput_rps"] * per_request, 1)
        print(
            f"  {clients} clients x {per_request} image(s) per request: {summary['images_per_second']} img/s",
            flush=True,
        )
        rows[str(per_request)] = summary
    return rows


def run_autoscale(args, image: bytes) -> int:
    from serving.queue import RedisQueue
    from serving.queue.connection import connect

    from .autoscale import (
        Autoscaler,
        ScalingRule,
        format_timeline,
        images_computed,
        publish_model,
        worker_process,
    )

    logs = args.out / "logs"
    redis_server = EmbeddedRedis().start()
    try:
        worker_args = on_queue(None, redis_server.url, "bench_autoscale", *model_flags(args.model, args))
        queue = RedisQueue(connect(redis_server.url, timeout=5), "bench_autoscale")
        web_args = [
            "run_keras_server.py",
            *on_queue("web", redis_server.url, "bench_autoscale", "--client-timeout", "120"),
            "--log-level",
            "WARNING",
        ]
        with python_server(web_args, logs / "autoscale_web.log", ready_path="/healthz") as web:
            publish_model(worker_process(worker_args, logs, 0), queue)
            rule = ScalingRule(
                list_length=8, min_replicas=0, max_replicas=4, polling_seconds=2, cooldown_seconds=10
            )
            scaler = Autoscaler(
                queue, rule, lambda n: worker_process(worker_args, logs, n), images_computed(queue)
            )
            scaler.start()
            result = run_load(web.url, image, 300, 32, timeout=180, progress=sys.stderr.isatty())
            while scaler.workers or queue.depth():
                time.sleep(1)  # until the cooldown has scaled the workers back to zero
            scaler.stop()
    finally:
        redis_server.stop()
    print(format_timeline(scaler.timeline))
    summary = result.summary()
    print(
        f"\n300 requests from 32 clients: {summary['statuses']}, {summary['throughput_rps']} req/s, "
        f"p50 {summary['p50_ms']} ms; workers 0 -> {scaler.peak} -> 0"
    )
    return 0 if summary["statuses"] == {"200": 300} else 1


def load_image(path: Path) -> bytes:
    """The photo to send; a generated 300x200 JPEG where the shared test photos are absent."""
    if path.is_file():
        return path.read_bytes()
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def write(results: dict, args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    plot(results, args.out / "benchmark.png")
    if args.docs_plot:
        args.docs_plot.parent.mkdir(parents=True, exist_ok=True)
        args.docs_plot.write_bytes((args.out / "benchmark.png").read_bytes())


if __name__ == "__main__":
    sys.exit(main())
