"""The printed table of the benchmark's figures and goals."""

from __future__ import annotations


def _cell(value, spec: str) -> str:
    return format(value, spec) if value is not None else format("-", ">" + spec.split(".")[0])


def table(results: dict) -> str:
    raw = results["raw"]
    lines = [
        f"machine: {results['machine']['cpus']} CPUs, load average before/after "
        f"{results['machine']['load_before']} / {results['machine']['load_after']}",
        f"raw {raw['model']} compiled call, in-process: best batch {raw['best_batch']} -> "
        f"{raw['best_rate']:.2f} img/s; single image {raw['single_ms']} ms "
        f"(img/s by batch: {raw['rate_by_batch']})",
        "",
        f"{'system':<26}{'c':>4}{'n':>6}{'req/s':>9}{'x raw':>7}{'p50 ms':>9}{'p99 ms':>9}  statuses",
    ]
    for label, key, rate in (
        ("server (queue+batching)", "server", raw["best_rate"]),
        ("naive baseline (seed)", "baseline", raw["best_rate"]),
        ("null-model pipeline", "null_pipeline", raw["best_rate"]),
    ):
        for row in results.get(key, []):
            statuses = " ".join(f"{k}:{v}" for k, v in row["statuses"].items())
            lines.append(
                f"{label:<26}{row['concurrency']:>4}{row['requests']:>6}"
                f"{row['throughput_rps']:>9.2f}{row['throughput_rps'] / rate:>7.2f}"
                f"{_cell(row['p50_ms'], '9.1f')}{_cell(row['p99_ms'], '9.1f')}  {statuses}"
            )
    memory = results["redis_memory"]
    if "server_overhead_c1" in results:
        spent = results["server_overhead_c1"]
        lines += [
            "",
            f"server at c=1, same requests: latency minus the model time it reports = "
            f"{spent['overhead_ms_p50']} ms p50 (max {spent['overhead_ms_max']}), "
            f"model {spent['model_ms_p50']} ms p50",
        ]
    lines += [
        "",
        f"Redis per queued image: {memory['bytes_per_image']} B (MEMORY USAGE of the list entry and "
        f"waiting marker; message {memory['message_bytes']} B; used_memory grew "
        f"{memory['used_memory_delta_per_image']} B per image with upload buffers) "
        f"vs float32 design {memory['float32_design_bytes']} B",
        "",
        f"{'goal':<58}{'measured':>26}{'ratio':>9}{'bound':>8}  met",
    ]
    for goal in results["goals"]:
        sign = ">=" if goal["higher_is_better"] else "<="
        lines.append(
            f"{goal['goal']:<58}{goal['measured']:>26}{goal['ratio']:>9.3f}"
            f"{sign:>4}{goal['bound']:>4g}  {'yes' if goal['met'] else 'NO'}"
        )
    return "\n".join(lines)
