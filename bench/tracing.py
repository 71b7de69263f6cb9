"""python -m bench.tracing: what tracing costs, on the null model (the web + Redis + batching
pipeline alone, where it weighs most).

    python -m bench.tracing             # servers with --tracing off and on (100 % sampled), c = 8 and 32
    python -m bench.tracing --quick     # smoke run
    python -m bench.tracing --baseline ../checkout-of-main   # also that code, which has no tracing

Each configuration is its own `run_keras_server.py --model null` on a private Redis; with
tracing on, every span is exported over OTLP/HTTP to a receiver on loopback that counts what it
gets without decoding it. The runs alternate off, on, off, on, ... so drift on a shared machine
falls on both; the ratio of the medians is printed, beside the cost of a span call while off.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import timeit
from pathlib import Path

from harness.launch import on_queue, python_server
from harness.otlp import OtlpReceiver
from harness.processes import ServerProcess, free_port
from serving import tracing
from serving.queue.embedded import EmbeddedRedis
from stress_test import run_load

from .__main__ import DEFAULT_IMAGE, RESULTS, load_image

MODES = ("baseline", "off", "on")


def off_call_ns() -> float:
    """Nanoseconds for ``with tracing.span(...)`` while tracing is off (the hot path's cost)."""
    assert not tracing.enabled()

    def one() -> None:
        with tracing.span("step", {"inference.images": 1}):
            pass

    runs = 200_000
    return min(timeit.repeat(one, number=runs, repeat=5)) / runs * 1e9


def measure(args: argparse.Namespace) -> dict[str, object]:
    image = load_image(args.image)
    rows: list[dict[str, object]] = []
    redis_server = EmbeddedRedis().start()  # private: nobody else's keys or load in the figures
    try:
        with OtlpReceiver(decode=False) as receiver:
            for round_number in range(args.rounds):
                for mode in MODES if args.baseline else MODES[1:]:
                    rows += run_server(args, image, redis_server.url, receiver.url, mode, round_number)
            time.sleep(1.5)  # the last export
            exported = receiver.bytes_received
    finally:
        redis_server.stop()
    return {"rows": rows, "otlp_bytes": exported, "ratio": args.ratio}


def run_server(
    args: argparse.Namespace, image: bytes, redis_url: str, otlp_url: str, mode: str, round_number: int
) -> list[dict[str, object]]:
    """One server with ``--tracing mode`` under each load level."""
    flags = on_queue(
        None, redis_url, f"bench_tracing_{mode}", "--model", args.model, "--log-level", "WARNING"
    )
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_url  # the server inherits it
    log_path = args.out / "logs" / f"tracing_{mode}_{round_number}.log"
    if mode == "baseline":  # another checkout: its own code, from its own folder
        port = free_port()
        command = [sys.executable, "run_keras_server.py", *flags, "--port", str(port)]
        server = ServerProcess(command, port, ready_timeout=180, log_path=log_path, cwd=args.baseline).start()
    else:
        ratio = ["--trace-sample-ratio", str(args.ratio)]
        server = python_server(["run_keras_server.py", *flags, "--tracing", mode, *ratio], log_path)
    rows = []
    with server:
        run_load(server.url, image, 16, 4, progress=False)  # first calls allocate
        for concurrency in args.concurrency:
            summary = run_load(server.url, image, args.requests, concurrency, progress=False).summary()
            rows.append({"tracing": mode, "round": round_number, **summary})
            print(
                f"  tracing {mode:3} c={concurrency:<3} {summary['throughput_rps']:8.1f} req/s  "
                f"p50 {summary['p50_ms']} ms  p99 {summary['p99_ms']} ms  {summary['statuses']}",
                flush=True,
            )
    return rows


def report(results: dict[str, object], concurrencies: list[int], span_ns: float) -> str:
    rows = results["rows"]
    assert isinstance(rows, list)
    lines = [
        f"tracing on: --trace-sample-ratio {results['ratio']}",
        f"machine: {os.cpu_count()} CPUs, {_cpu_model()}",
        f"a span call while tracing is off: {span_ns:.0f} ns (4 a request, 3 a batch)",
        f"OTLP bytes received while on: {results['otlp_bytes']}",
        "",
        "median req/s of the runs, and their ratios:",
        f"{'c':>4} {'baseline':>9} {'off':>9} {'on':>9} {'off / baseline':>15} {'on / off':>9}",
    ]
    for concurrency in concurrencies:
        rates = {
            mode: statistics.median(
                [
                    float(row["throughput_rps"])
                    for row in rows
                    if row["tracing"] == mode and row["concurrency"] == concurrency
                ]
                or [float("nan")]
            )
            for mode in MODES
        }
        lines.append(
            f"{concurrency:>4} {rates['baseline']:>9.1f} {rates['off']:>9.1f} {rates['on']:>9.1f} "
            f"{rates['off'] / rates['baseline']:>15.3f} {rates['on'] / rates['off']:>9.3f}"
        )
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="null", help="what the servers serve (null: the pipeline alone)")
    parser.add_argument("--ratio", type=float, default=1.0, help="--trace-sample-ratio of the traced servers")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument(
        "--baseline", type=Path, default=None, help="a checkout of the code before tracing, run the same way"
    )
    parser.add_argument("--concurrency", default="8,32")
    parser.add_argument("--requests", type=int, default=1500, help="per load level and run")
    parser.add_argument("--rounds", type=int, default=3, help="off/on pairs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="smoke run: c = 4, 40 requests, one round")
    args = parser.parse_args(argv)
    if args.quick:
        args.concurrency, args.requests, args.rounds = "4", 40, 1
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    span_ns = off_call_ns()
    results = measure(args)
    print()
    print(report(results, args.concurrency, span_ns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
