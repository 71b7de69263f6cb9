"""Throughput and p99 latency against concurrency: the server on its default runtime and on
TensorFlow, the naive baseline, and the raw limit of each runtime."""

from __future__ import annotations

from pathlib import Path


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, (speed, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    model = results.get("server_model", {})
    systems = (
        ("server", f"server ({model.get('runtime', '?')} {model.get('precision', '')})", "o-"),
        ("server_tensorflow", "server (--runtime tensorflow)", "^-"),
        ("baseline", "naive per-request predict (TensorFlow)", "s--"),
    )
    for key, label, style in systems:
        rows = results.get(key, [])
        concurrency = [row["concurrency"] for row in rows]
        speed.plot(concurrency, [row["throughput_rps"] for row in rows], style, label=label)
        latency.plot(concurrency, [row["p99_ms"] or float("nan") for row in rows], style, label=label)
    for raw, colour in zip(results["raw_runtimes"], ("grey", "tab:green", "tab:purple")):
        ran = f"{raw['runtime']} {raw['precision']}"
        asked = "" if raw.get("asked", ran) == ran else f", asked {raw['asked'].split()[-1]}"
        speed.axhline(
            raw["best_rate"],
            color=colour,
            linestyle=":",
            label=f"raw {ran}{asked} (batch {raw['best_batch']})",
        )
    name = results["raw_runtimes"][0]["model"]
    speed.set(title=f"Throughput ({name})", xlabel="concurrent clients", ylabel="images/s")
    latency.set(title="p99 latency", xlabel="concurrent clients", ylabel="ms")
    ticks = sorted({row["concurrency"] for key, _, _ in systems for row in results.get(key, [])})
    for axes in (speed, latency):
        axes.set_xscale("log", base=2)
        axes.set_xticks(ticks, [str(t) for t in ticks])
        axes.minorticks_off()
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    speed.set_ylim(bottom=0)
    latency.set_ylim(bottom=0)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
