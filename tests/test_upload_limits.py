"""Every front door reaches the queue through one path with one set of limits: too many images
is a 400 that names the limit, no image is a 400, and neither queues anything. The app has no
worker (only a worker's record of its model), so anything queued by mistake would stay in a lane."""

from __future__ import annotations

import base64
import io
import struct

import orjson
import pytest

from serving.queue import RedisQueue
from serving.queue.messages import LANES, Heartbeat, ModelInfo

from .support import colour_image, leftover_keys, pretend_worker

LIMIT = 4  # the colour apps' --max-images-per-request
PNG = colour_image("red", size=(8, 8))


@pytest.fixture(scope="module")
def app(colour_apps, module_redis):
    app = colour_apps(worker=False, client_timeout=0.5)
    model = ModelInfo("colour", (32, 32), 3)
    pretend_worker(module_redis, app.config["QUEUE_NAME"], "idle", Heartbeat(model, "h", 1, 8), ttl=600)
    return app


def form(count: int) -> dict:
    files = [(io.BytesIO(PNG), f"{i}.png") for i in range(count)]
    fields = {"image": files, "top_k": "1"} if files else {"top_k": "1"}
    return {"data": fields, "content_type": "multipart/form-data"}


def json_images(count: int) -> dict:
    return {"json": {"images": [base64.b64encode(PNG).decode()] * count}}


def v2_json(count: int) -> dict:
    tensor = {
        "name": "image",
        "shape": [count],
        "datatype": "BYTES",
        "data": [base64.b64encode(PNG).decode()] * count,
    }
    return {"json": {"inputs": [tensor]}}


def v2_binary(count: int) -> dict:
    """Built by hand from the protocol: each BYTES element is a little-endian uint32 length and
    its bytes, after the JSON header whose length Inference-Header-Content-Length gives."""
    data = b"".join(struct.pack("<I", len(PNG)) + PNG for _ in range(count))
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [count],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(data)},
                }
            ]
        }
    )
    return {
        "data": header + data,
        "headers": {
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream",
        },
    }


DOORS = {
    "form": ("/predict", form),
    "json": ("/predict", json_images),
    "jobs form": ("/jobs", form),
    "jobs json": ("/jobs", json_images),
    "v2 json": ("/v2/models/colour/infer", v2_json),
    "v2 binary": ("/v2/models/colour/infer", v2_binary),
}


def error(response) -> str:
    body = response.get_json()
    return body["error"]


def nothing_queued(app, module_redis) -> None:
    keys = RedisQueue(module_redis, app.config["QUEUE_NAME"]).keys
    assert [module_redis.llen(keys.lane(lane)) for lane in LANES] == [0, 0]
    assert leftover_keys(module_redis, app.config["QUEUE_NAME"]) == []


@pytest.mark.parametrize("door", DOORS)
def test_too_many_images_is_a_400_naming_the_limit_at_every_door(app, module_redis, door):
    path, body = DOORS[door]
    response = app.test_client().post(path, **body(LIMIT + 1))
    assert response.status_code == 400, response.get_data(as_text=True)
    assert f"the limit is {LIMIT}" in error(response)
    nothing_queued(app, module_redis)


@pytest.mark.parametrize("door", DOORS)
def test_no_image_is_a_400_at_every_door(app, module_redis, door):
    path, body = DOORS[door]
    response = app.test_client().post(path, **body(0))
    assert response.status_code == 400, response.get_data(as_text=True)
    assert "image" in error(response).lower()
    nothing_queued(app, module_redis)


def test_an_empty_raw_body_and_the_page_without_a_file_are_400s(app, module_redis):
    client = app.test_client()
    raw = client.post("/predict", data=b"", headers={"Content-Type": "image/png"})
    assert raw.status_code == 400 and "empty" in error(raw)
    page = client.post("/", data={})
    assert page.status_code == 400 and "Choose an image first." in page.get_data(as_text=True)
    nothing_queued(app, module_redis)


def test_a_v2_shape_too_large_to_count_is_a_client_error_not_an_outage(app, module_redis):
    tensor = {
        "name": "image",
        "shape": [2**62, 4],
        "datatype": "BYTES",
        "data": [base64.b64encode(PNG).decode()],
    }
    response = app.test_client().post("/v2/models/colour/infer", json={"inputs": [tensor]})
    assert response.status_code == 400 and "holds" in error(response)
    nothing_queued(app, module_redis)


def test_the_limit_admits_exactly_the_limit(app, module_redis):
    """At the limit a request is accepted: the images are queued for the model (no worker here,
    so the request times out and withdraws them)."""
    client = app.test_client()
    response = client.post("/predict", **json_images(LIMIT))
    assert response.status_code == 504  # queued, waited, withdrawn: nobody is computing
    nothing_queued(app, module_redis)
