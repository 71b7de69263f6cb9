"""The performance goals, each a ratio of figures measured in the same run against its bound."""

from __future__ import annotations


def saturated(rows: list[dict]) -> float:
    """Best throughput over the upper half of the measured concurrencies."""
    top = max((row["concurrency"] for row in rows), default=0)
    return max((row["throughput_rps"] for row in rows if row["concurrency"] * 2 >= top), default=0.0)


def at_concurrency(rows: list[dict], concurrency: int) -> dict | None:
    return next((row for row in rows if row["concurrency"] == concurrency), None)


def default_raw(results: dict) -> dict:
    """The raw figures of the runtime and precision the default server really ran."""
    model = results.get("server_model", {})
    runs = results["raw_runtimes"]
    same = [
        raw
        for raw in runs
        if (raw["runtime"], raw["precision"]) == (model.get("runtime"), model.get("precision"))
    ]
    return max(same or runs, key=lambda raw: raw["best_rate"])


def evaluate(results: dict) -> list[dict]:
    """One entry per goal: what is compared, the ratio, the bound, and whether it is met."""
    best_raw = max(results["raw_runtimes"], key=lambda raw: raw["best_rate"])
    server = saturated(results["server"])
    goals = []
    if results.get("server_tensorflow"):
        tensorflow = saturated(results["server_tensorflow"])
        goals.append(
            _goal(
                "saturated server throughput >= 2.2 x the --runtime tensorflow server's",
                f"{server:.2f} / {tensorflow:.2f} img/s",
                server / tensorflow,
                2.2,
                True,
            )
        )
    goals.append(
        _goal(
            "saturated server throughput >= 0.75 x best raw rate of any runtime",
            f"{server:.2f} / {best_raw['best_rate']:.2f} img/s",
            server / best_raw["best_rate"],
            0.75,
            True,
        )
    )
    single, raw = at_concurrency(results["server"], 1), default_raw(results)
    if single and single["p50_ms"] is not None:
        budget = raw["single_ms"] + 8
        goals.append(
            _goal(
                "c=1 p50 latency <= default runtime's raw single-image call + 8 ms",
                f"{single['p50_ms']:.1f} / {budget:.1f} ms",
                single["p50_ms"] / budget,
                1.0,
                False,
            )
        )
    goals += precision_goals(results)
    null_rate = max(row["throughput_rps"] for row in results["null_pipeline"])
    goals.append(
        _goal(
            "null-model pipeline capacity >= 10 x best raw rate",
            f"{null_rate:.1f} / {best_raw['best_rate']:.2f} req/s",
            null_rate / best_raw["best_rate"],
            10.0,
            True,
        )
    )
    lanes = results.get("priority")
    if lanes:
        idle, loaded = lanes["idle"]["p50_ms"], lanes["under_bulk"]["p50_ms"]
        goals.append(
            _goal(
                f"interactive p50 under {lanes['bulk_images']} queued bulk images <= 2 x idle p50",
                f"{loaded:.0f} / {idle:.0f} ms",
                loaded / idle,
                2.0,
                False,
            )
        )
    multi = results.get("multi_image")
    if multi:
        single, several = multi["1"]["images_per_second"], multi["8"]["images_per_second"]
        goals.append(
            _goal(
                "8-image requests >= 1.2 x single-image images/s (null model, 64 in flight)",
                f"{several:.0f} / {single:.0f} img/s",
                several / single,
                1.2,
                True,
            )
        )
    memory = results["redis_memory"]
    goals.append(
        _goal(
            "Redis bytes per queued image <= 0.26 x float32 design",
            f"{memory['bytes_per_image']} / {memory['float32_design_bytes']} B",
            memory["ratio"],
            0.26,
            False,
        )
    )
    return goals


def precision_goals(results: dict) -> list[dict]:
    """With --calibration-dir: the INT8 server against raw INT8, and against the f32 server."""
    if not results.get("server_int8") or not results.get("server_f32"):
        return []
    served = results.get("server_int8_model", {}).get("precision", "")
    raws = [
        raw for raw in results["raw_runtimes"] if raw["precision"] == served and raw["runtime"] == "openvino"
    ]
    int8_server, f32_server = saturated(results["server_int8"]), saturated(results["server_f32"])
    goals = []
    if raws:
        raw = max(raws, key=lambda row: row["best_rate"])
        goals.append(
            _goal(
                f"server calibrated for INT8 (serving {served}) >= 0.8 x raw {served} best rate",
                f"{int8_server:.2f} / {raw['best_rate']:.2f} img/s",
                int8_server / raw["best_rate"],
                0.8,
                True,
            )
        )
    goals.append(
        _goal(
            f"server calibrated for INT8 (serving {served}) >= 1.6 x the --precision f32 server",
            f"{int8_server:.2f} / {f32_server:.2f} img/s",
            int8_server / f32_server,
            1.6,
            True,
        )
    )
    return goals


def _goal(text: str, measured: str, ratio: float, bound: float, higher_is_better: bool) -> dict:
    met = ratio >= bound if higher_is_better else ratio <= bound
    return {
        "goal": text,
        "measured": measured,
        "ratio": round(ratio, 3),
        "bound": bound,
        "higher_is_better": higher_is_better,
        "met": met,
    }
