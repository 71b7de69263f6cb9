"""Throughput and p99 latency against concurrency: server vs naive baseline vs the raw limit."""

from __future__ import annotations

from pathlib import Path


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, (speed, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label, style in (
        ("server", "server (Redis queue + batching)", "o-"),
        ("baseline", "naive per-request predict", "s--"),
    ):
        rows = results.get(key, [])
        concurrency = [row["concurrency"] for row in rows]
        speed.plot(concurrency, [row["throughput_rps"] for row in rows], style, label=label)
        latency.plot(concurrency, [row["p99_ms"] or float("nan") for row in rows], style, label=label)
    raw = results["raw"]
    speed.axhline(
        raw["best_rate"], color="grey", linestyle=":", label=f"raw model limit (batch {raw['best_batch']})"
    )
    speed.set(title=f"Throughput ({raw['model']})", xlabel="concurrent clients", ylabel="images/s")
    latency.set(title="p99 latency", xlabel="concurrent clients", ylabel="ms")
    ticks = sorted({row["concurrency"] for key in ("server", "baseline") for row in results.get(key, [])})
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
