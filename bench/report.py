"""The printed table of the benchmark's figures and goals."""

from __future__ import annotations

SYSTEMS = (
    ("server, default runtime", "server"),
    ("server, --calibration-dir", "server_int8"),
    ("server, --precision f32", "server_f32"),
    ("server, --runtime tensorflow", "server_tensorflow"),
    ("naive baseline (seed)", "baseline"),
    ("null-model pipeline", "null_pipeline"),
)


def _cell(value, spec: str) -> str:
    return format(value, spec) if value is not None else format("-", ">" + spec.split(".")[0])


def table(results: dict) -> str:
    best = max(raw["best_rate"] for raw in results["raw_runtimes"])
    lines = [
        f"machine: {results['machine']['cpus']} CPUs, load average before/after "
        f"{results['machine']['load_before']} / {results['machine']['load_after']}",
        "",
    ]
    for raw in results["raw_runtimes"]:
        ran = f"{raw['runtime']} {raw['precision']}"
        asked = "" if raw["asked"] == ran else f" (asked {raw['asked']}: this CPU runs {raw['precision']})"
        lines.append(
            f"raw {raw['model']} on {ran}{asked}: best batch {raw['best_batch']} -> "
            f"{raw['best_rate']:.2f} img/s; single image {raw['single_ms']} ms "
            f"(img/s by batch: {raw['rate_by_batch']})"
        )
    if "server_model" in results:
        model = results["server_model"]
        lines.append(
            f"the default server ran {model['name']} on {model.get('runtime', '-')} "
            f"{model.get('precision', '-')}"
        )
    lines += [
        "",
        f"{'system':<30}{'c':>4}{'n':>6}{'req/s':>9}{'x best raw':>11}{'p50 ms':>9}{'p99 ms':>9}  statuses",
    ]
    for label, key in SYSTEMS:
        for row in results.get(key, []):
            statuses = " ".join(f"{k}:{v}" for k, v in row["statuses"].items())
            lines.append(
                f"{label:<30}{row['concurrency']:>4}{row['requests']:>6}"
                f"{row['throughput_rps']:>9.2f}{row['throughput_rps'] / best:>11.2f}"
                f"{_cell(row['p50_ms'], '9.1f')}{_cell(row['p99_ms'], '9.1f')}  {statuses}"
            )
    if "server_overhead_c1" in results:
        spent = results["server_overhead_c1"]
        lines += [
            "",
            f"default server at c=1, same requests: latency minus the model time it reports = "
            f"{spent['overhead_ms_p50']} ms p50 (max {spent['overhead_ms_max']}), "
            f"model {spent['model_ms_p50']} ms p50",
        ]
    memory = results["redis_memory"]
    lines += [
        "",
        f"Redis per queued image: {memory['bytes_per_image']} B (MEMORY USAGE of the message, its lane "
        f"entries and waiting marker; message {memory['message_bytes']} B) vs float32-in-base64 design "
        f"{memory['float32_design_bytes']} B",
        "",
        f"{'goal':<68}{'measured':>26}{'ratio':>9}{'bound':>8}  met",
    ]
    for goal in results["goals"]:
        sign = ">=" if goal["higher_is_better"] else "<="
        lines.append(
            f"{goal['goal']:<68}{goal['measured']:>26}{goal['ratio']:>9.3f}"
            f"{sign:>4}{goal['bound']:>4g}  {'yes' if goal['met'] else 'NO'}"
        )
    return "\n".join(lines)
