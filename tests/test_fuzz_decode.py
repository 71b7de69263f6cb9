"""Fuzzing the decode path: random mutations of valid files of every accepted format, through
the real app, a real redis-server and a real worker. Every outcome is a 200 or a 400."""

from __future__ import annotations

import io
import threading
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from serving.images import ACCEPTED_FORMATS
from serving.models.classifier import NullClassifier
from serving.queue.connection import open_queue
from serving.web.app import create_app
from serving.worker.loop import ModelWorker

from .support import leftover_keys, make_settings

# Pillow warns about the corrupt EXIF and chunks the mutants are full of: expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")

Q = "fuzzq"
MUTANTS_PER_FORMAT = 30
SAVE_OPTIONS = {
    "GIF": {"save_all": True, "append_images": [Image.new("P", (48, 40), 3)]},
    "TIFF": {"compression": "tiff_lzw"},
    "PNG": {"optimize": True},
}


def seed_file(fmt: str, rng: np.random.Generator) -> bytes:
    pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    pixels[:20] //= 4  # some structure for the compressors
    image = Image.fromarray(pixels)
    if fmt == "GIF":
        image = image.convert("P")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **SAVE_OPTIONS.get(fmt, {}))
    return buffer.getvalue()


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    data = bytearray(data)
    kind = rng.integers(5)
    at = int(rng.integers(len(data)))
    if kind == 0:  # truncated
        return bytes(data[:at])
    if kind == 1:  # a few flipped bytes
        for spot in rng.integers(len(data), size=int(rng.integers(1, 9))):
            data[spot] ^= int(rng.integers(1, 256))
    elif kind == 2:  # random bytes inserted
        data[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    elif kind == 3:  # a run zeroed
        data[at : at + int(rng.integers(1, 256))] = bytes(min(len(data) - at, 256))
    else:  # a length field grown: large numbers where sizes live
        data[at : at + 4] = b"\x7f\xff\xff\xff"
    return bytes(data)


@pytest.fixture
def served(redis_server, redis_client):
    settings = make_settings(redis_url=redis_server.url, queue_name=Q, client_timeout=5.0, batch_wait_ms=0)
    queue = open_queue(redis_server.url, Q, call_timeout=5, longest_block=10)
    worker = ModelWorker(
        queue, NullClassifier([f"class {i}" for i in range(10)], input_size=(32, 32)), settings
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        app = create_app(settings)
        client = app.test_client()
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield client
    finally:
        worker.stop()
        thread.join(timeout=10)


def test_mutated_images_of_every_accepted_format_get_200_or_400(served, redis_client):
    rng = np.random.default_rng(2026)
    outcomes: Counter = Counter()
    started = time.monotonic()
    for fmt in ACCEPTED_FORMATS:
        seed = seed_file(fmt, rng)
        assert served.post("/predict", data={"image": (io.BytesIO(seed), "seed")}).status_code == 200, fmt
        for _ in range(MUTANTS_PER_FORMAT):
            mutant = mutate(seed, rng)
            case_started = time.monotonic()
            response = served.post(
                "/predict", data={"image": (io.BytesIO(mutant), "mutant")}, content_type="multipart/form-data"
            )
            assert response.status_code in (200, 400), (fmt, response.status_code, response.json, mutant[:64])
            assert response.json["success"] is (response.status_code == 200)
            assert time.monotonic() - case_started < 5, (fmt, "a mutant took too long")
            outcomes[(fmt, response.status_code)] += 1
    print(f"\n{sum(outcomes.values())} mutants in {time.monotonic() - started:.1f} s: {dict(outcomes)}")
    assert leftover_keys(redis_client, Q) == []
