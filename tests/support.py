"""Shared test helpers: images of known content, a tiny deterministic model, a live server."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TESTDATA = ROOT.parent / "shared" / "testdata"
COLOURS = {"red": (210, 30, 40), "green": (30, 200, 50), "blue": (20, 40, 220)}
TINY_INPUT = 32


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def colour_image(colour: str, size=(64, 48), fmt: str = "PNG", mode: str = "RGB", seed: int = 0) -> bytes:
    """A noisy image whose dominant colour is ``colour``, encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    base = np.array(COLOURS[colour], dtype=np.int16)
    noise = rng.integers(-20, 21, size=(size[1], size[0], 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def build_colour_model(directory: Path, slow: bool = False) -> tuple[Path, Path]:
    """A Keras classifier that names an image's dominant colour: mean pixel -> scaled identity.

    Deterministic and instant, so concurrency tests check real answers at speed. ``slow`` adds
    convolutions whose output is multiplied by zero: the same answers, but a batch of 16 keeps
    the CPU busy for a good fraction of a second, so fault tests can strike mid-batch.
    """
    import keras

    inputs = keras.Input((TINY_INPUT, TINY_INPUT, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    logits = keras.layers.Dense(3, use_bias=False, name="colour")(pooled)
    if slow:
        busy = inputs
        for i in range(3):
            busy = keras.layers.Conv2D(192, 3, padding="same", activation="relu", name=f"busy{i}")(busy)
        busy = keras.layers.Dense(3, kernel_initializer="zeros", use_bias=False, name="busy_out")(
            keras.layers.GlobalAveragePooling2D()(busy))
        logits = keras.layers.Add()([logits, busy])
    model = keras.Model(inputs, keras.layers.Softmax()(logits))
    model.get_layer("colour").set_weights([np.eye(3, dtype=np.float32) * 20])
    stem = "slow_colour" if slow else "colour"
    model_path = directory / f"{stem}.keras"
    labels_path = directory / f"{stem}_labels.json"
    model.save(model_path)
    labels_path.write_text(json.dumps(list(COLOURS)))
    return model_path, labels_path


def colour_model_args(colour_model: tuple[Path, Path]) -> tuple[str, ...]:
    """Server flags that serve the tiny dominant-colour classifier."""
    model_path, labels_path = colour_model
    return "--model", str(model_path), "--labels", str(labels_path), "--preprocess", "unit"


def colour_model_server(redis_url: str, queue_name: str, colour_model, log_dir: Path,
                        *extra: str) -> LiveServer:
    """A started one-process server (web + worker thread) of the colour classifier."""
    return LiveServer("--redis-url", redis_url, "--queue-name", queue_name, *colour_model_args(colour_model),
                      *extra, log_path=log_dir / "server.log").start()


def leftover_keys(client, queue_name: str) -> list[str]:
    """Keys of a queue other than live worker heartbeats and the metrics hash: none after a run."""
    keys = [key.decode() for key in client.scan_iter(match=f"{queue_name}*")]
    return sorted(key for key in keys
                  if not key.startswith(f"{queue_name}:worker:") and key != f"{queue_name}:stats")


class LiveServer:
    """`python run_keras_server.py ...` in a child process, on a free port."""

    def __init__(self, *args: str, env: dict | None = None, log_path: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.args = [sys.executable, str(ROOT / "run_keras_server.py"), "--port", str(self.port), *args]
        self.env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
        self.process: subprocess.Popen | None = None

    def spawn(self) -> LiveServer:
        """Start the process without waiting for HTTP (a --role worker serves none)."""
        out = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=out,
                                        stderr=subprocess.STDOUT)
        return self

    def start(self, ready_timeout: float = 120.0, wait_ready: bool = True) -> LiveServer:
        self.spawn()
        give_up = time.monotonic() + ready_timeout
        path = "/readyz" if wait_ready else "/healthz"
        while time.monotonic() < give_up:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.log()}")
            try:
                if requests.get(self.url + path, timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)  # waiting for a child process to come up
        self.stop()
        raise RuntimeError(f"server not ready in {ready_timeout} s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path else ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def predict(self, data: bytes, name: str = "image.png", **kwargs) -> requests.Response:
        return requests.post(self.url + "/predict", files={"image": (name, data)}, timeout=30, **kwargs)
