"""The performance goals, each a ratio of measured figures against its bound."""

from __future__ import annotations


def _best_throughput(rows: list[dict]) -> float:
    """Best of the given load levels (for "saturated": the upper half of the concurrencies)."""
    return max((row["throughput_rps"] for row in rows), default=0.0)


def _at_concurrency(rows: list[dict], concurrency: int) -> dict | None:
    return next((row for row in rows if row["concurrency"] == concurrency), None)


def evaluate(raw: dict, server: list[dict], null_pipeline: list[dict], redis_memory: dict) -> list[dict]:
    """One entry per goal: what is compared, the ratio, the bound, and whether it is met."""
    goals = []
    top = max((row["concurrency"] for row in server), default=0)
    saturated = _best_throughput([row for row in server if row["concurrency"] * 2 >= top])
    goals.append(
        {
            "goal": "saturated server throughput >= 0.9 x raw model rate",
            "measured": f"{saturated:.2f} / {raw['best_rate']:.2f} img/s",
            "ratio": saturated / raw["best_rate"],
            "bound": 0.9,
            "higher_is_better": True,
        }
    )
    single = _at_concurrency(server, 1)
    if single and single["p50_ms"] is not None and raw.get("single_ms"):
        budget = raw["single_ms"] + 20
        goals.append(
            {
                "goal": "c=1 p50 latency <= raw single-image call + 20 ms",
                "measured": f"{single['p50_ms']:.1f} / {budget:.1f} ms",
                "ratio": single["p50_ms"] / budget,
                "bound": 1.0,
                "higher_is_better": False,
            }
        )
    null_rate = _best_throughput(null_pipeline)
    goals.append(
        {
            "goal": "null-model pipeline capacity >= 10 x raw model rate",
            "measured": f"{null_rate:.1f} / {raw['best_rate']:.2f} req/s",
            "ratio": null_rate / raw["best_rate"],
            "bound": 10.0,
            "higher_is_better": True,
        }
    )
    goals.append(
        {
            "goal": "Redis bytes per queued image <= 0.26 x float32 design",
            "measured": f"{redis_memory['bytes_per_image']} / {redis_memory['float32_design_bytes']} B",
            "ratio": redis_memory["ratio"],
            "bound": 0.26,
            "higher_is_better": False,
        }
    )
    for goal in goals:
        ratio, bound = goal["ratio"], goal["bound"]
        goal["ratio"] = round(ratio, 3)
        goal["met"] = ratio >= bound if goal["higher_is_better"] else ratio <= bound
    return goals
