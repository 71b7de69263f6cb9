"""Shared test helpers: images of known content, a tiny deterministic model, a live server."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from harness.launch import server_command
from harness.processes import ROOT, ServerProcess, free_port, wait_until
from serving.models.preprocessing import Preprocessing
from serving.queue import Batch
from serving.queue.keys import DEFAULT_TENANT, QueueKeys
from serving.queue.messages import INTERACTIVE, ImageRef, MessageError, Request
from serving.settings import Settings, load_settings

__all__ = ["ROOT", "TESTDATA", "COLOURS", "TINY_INPUT", "free_port", "wait_until"]

TESTDATA = ROOT.parent / "shared" / "testdata"
COLOURS = {"red": (210, 30, 40), "green": (30, 200, 50), "blue": (20, 40, 220)}
TINY_INPUT = 32


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
            keras.layers.GlobalAveragePooling2D()(busy)
        )
        logits = keras.layers.Add()([logits, busy])
    model = keras.Model(inputs, keras.layers.Softmax()(logits))
    model.get_layer("colour").set_weights([np.eye(3, dtype=np.float32) * 20])
    stem = "slow_colour" if slow else "colour"
    model_path = directory / f"{stem}.keras"
    labels_path = directory / f"{stem}_labels.json"
    model.save(model_path)
    labels_path.write_text(json.dumps(list(COLOURS)))
    return model_path, labels_path


def reference_preprocess(preprocessing: Preprocessing, batch: np.ndarray) -> np.ndarray:
    """A preprocessing computed in numpy: what the runtimes' compiled versions are checked against."""
    pixels = batch[..., ::-1] if preprocessing.reverse_channels else batch
    mean, scale = np.array(preprocessing.mean, np.float32), np.array(preprocessing.scale, np.float32)
    return (pixels.astype(np.float32) - mean) / scale


def colour_model_args(colour_model: tuple[Path, Path]) -> tuple[str, ...]:
    """Server flags that serve the tiny dominant-colour classifier, in f32: tests check its
    probabilities to 1e-4, and bf16 (which --precision auto may pick on a CPU that has it) is off
    by 1e-3."""
    model_path, labels_path = colour_model
    return (
        "--model",
        str(model_path),
        "--labels",
        str(labels_path),
        "--preprocess",
        "unit",
        "--precision",
        "f32",
        "--model-name",
        "colour",  # the slow variant too: one model, whichever file serves it
    )


def pretend_worker(
    client, queue_name: str, worker_id: str, heartbeat, ttl: float, deployment: str | None = None
):
    """A worker's records without a worker: its heartbeat on ``queue_name`` and the catalogue
    entry web servers route by (``deployment``: ``queue_name``, as in-process apps have it)."""
    from serving.queue import RedisQueue
    from serving.queue.catalogue import Catalogue

    RedisQueue(client, queue_name).beat(worker_id, heartbeat, ttl)
    Catalogue(client, deployment or queue_name).announce(heartbeat.model, queue_name, ttl)


def push_raw(
    queue, lane: str, *entries: bytes, tenant: str = DEFAULT_TENANT, whole: bool = False
) -> list[bytes]:
    """Queue entries in a lane as the queue's scripts do (in the tenant's lane, a count token
    each, the tenant marked active) without a request's bookkeeping: for tests of the take. An
    entry that is a Request message waits under its image key (interactive) or in its job's
    images hash, and its reference goes in the lane; anything else (a reference, a hostile
    entry) goes in as it is, and so does every entry with ``whole`` (as the version before
    references queued). Returns the lane entries."""
    pipe = queue.redis.pipeline(transaction=True)
    refs = []
    for entry in entries:
        try:
            request = Request.from_bytes(entry)
        except MessageError:
            request = None
        if whole or request is None:
            refs.append(entry)
            continue
        owner = request.reply_to
        if lane == INTERACTIVE:
            pipe.set(queue.keys.image(owner, request.index), entry)
        else:
            pipe.hset(queue.keys.job_images(owner), request.index, entry)
        refs.append(ImageRef(owner, request.index).to_bytes())
    pipe.rpush(queue.keys.tenant_lane(tenant, lane), *refs)
    pipe.rpush(queue.keys.lane(lane), *[b"1"] * len(refs))
    pipe.zadd(queue.keys.active(lane), {tenant: 0}, nx=True)
    pipe.execute()
    return refs


def queued(queue, lane: str = INTERACTIVE, tenant: str = DEFAULT_TENANT) -> list[bytes]:
    """The references waiting in a tenant's lane, oldest first (``<request or job>:<index>``)."""
    return queue.redis.lrange(queue.keys.tenant_lane(tenant, lane), 0, -1)


def messages_of(queue, refs: list[bytes], lane: str = INTERACTIVE) -> list[bytes]:
    """The messages behind interactive or job image references, as a worker reads them."""
    batch = Batch(refs, []) if lane == INTERACTIVE else Batch([], refs)
    return [message for _, message in queue.read_messages(batch)]


def colour_queue(deployment: str, version: str = "1") -> str:
    """The queue a worker serving the colour model takes from in deployment ``deployment``."""
    from serving.queue.catalogue import model_queue_name

    return model_queue_name(deployment, "colour", version)


def leftover_keys(client, queue_name: str) -> list[str]:
    """Keys of a queue, and of every model version's queue of the deployment of that name, other
    than live worker heartbeats and the records kept on purpose (the counts, the last model, the
    workers' index, the catalogue): none after a run."""
    from serving.queue.catalogue import Catalogue

    found = {key.decode() for key in client.scan_iter(match=f"{{{queue_name}}}*")}
    found |= {key.decode() for key in client.scan_iter(match=f"{{{queue_name}:*")}
    kept = set(Catalogue(client, queue_name).all_keys())
    # The tenants' registry, rate buckets and open-job counts (those two expire on their own).
    kept |= {key for key in found if key.startswith("{" + queue_name + ":tenants}")}
    leftovers = []
    for key in sorted(found - kept):
        names = QueueKeys(key[1 : key.index("}")])
        if key.startswith(names.heartbeat("")) or key in (names.stats, names.model, names.workers):
            continue
        leftovers.append(key)
    return leftovers


def make_settings(**overrides) -> Settings:
    """Settings as the server would load them with no flags and no environment, then changed."""
    return load_settings([], environ={}).replace(**overrides)


class LiveServer(ServerProcess):
    """`python run_keras_server.py --port <free port> ...` in a child process."""

    def __init__(
        self,
        *args: str,
        env: dict | None = None,
        log_path: Path | None = None,
        ready_path: str | None = "/readyz",
        ready_timeout: float = 120.0,
    ):
        port = free_port()
        super().__init__(
            server_command("--port", str(port), *args),
            port,
            ready_path=ready_path,
            ready_timeout=ready_timeout,
            env=env,
            log_path=log_path,
            name="run_keras_server",
        )
        self.queue_name = args[args.index("--queue-name") + 1] if "--queue-name" in args else "image_queue"

    def predict(self, data: bytes, name: str = "image.png", **kwargs) -> requests.Response:
        return requests.post(self.url + "/predict", files={"image": (name, data)}, timeout=30, **kwargs)


def record_compiled_patterns(monkeypatch) -> list:
    """Every pattern ``re.compile`` is given from now on (to the end of the test), compiled as usual."""
    compiled: list = []
    original = re.compile

    def recording(pattern, flags=0):
        compiled.append(pattern)
        return original(pattern, flags)

    monkeypatch.setattr(re, "compile", recording)
    return compiled
