"""The Open Inference Protocol (KServe v2): in-process for every shape and error, and a real
Triton client (tritonclient[http]) against the live server."""

from __future__ import annotations

import base64
import struct

import numpy as np
import orjson
import pytest

from serving.queue import RedisQueue
from serving.queue.catalogue import Catalogue
from serving.queue.messages import Heartbeat, ModelInfo

from .support import COLOURS, colour_image, leftover_keys, pretend_worker

# The binary tensor data extension, as the protocol describes it (not the server's helpers): the
# JSON header's length in this HTTP header, then each tensor's bytes; a BYTES tensor is, per
# element, its length as a little-endian uint32 and then its bytes.
HEADER_LENGTH = "Inference-Header-Content-Length"


def bytes_tensor(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def read_bytes_tensor(raw: bytes) -> list[bytes]:
    elements, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        elements.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    assert offset == len(raw), "the tensor's lengths do not add up to its size"
    return elements


def binary_outputs(response) -> dict[str, tuple[dict, bytes]]:
    """Output name -> (its JSON description, its binary data), read from a binary response."""
    header_length = int(response.headers[HEADER_LENGTH])
    raw = response.get_data()
    header = orjson.loads(raw[:header_length])
    outputs, offset = {}, header_length
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        outputs[output["name"]] = (output, raw[offset : offset + size])
        offset += size
    assert offset == len(raw)
    return outputs


@pytest.fixture
def client(colour_app):
    return colour_app.test_client()


def infer_body(*images: bytes, outputs=None, parameters=None, request_id=None) -> dict:
    body: dict = {
        "inputs": [
            {
                "name": "image",
                "shape": [len(images)],
                "datatype": "BYTES",
                "data": [base64.b64encode(image).decode() for image in images],
            }
        ]
    }
    if outputs is not None:
        body["outputs"] = outputs
    if parameters is not None:
        body["parameters"] = parameters
    if request_id is not None:
        body["id"] = request_id
    return body


def test_server_and_model_metadata_and_health(client):
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    server = client.get("/v2").json
    assert server["name"] == "keras-redis-server" and "binary_tensor_data" in server["extensions"]
    model = client.get("/v2/models/colour").json
    assert model["name"] == "colour" and model["inputs"] == [
        {"name": "image", "datatype": "BYTES", "shape": [-1]}
    ]
    assert {o["name"]: o["datatype"] for o in model["outputs"]} == {
        "labels": "BYTES",
        "probabilities": "FP32",
        "class_ids": "INT64",
    }
    assert client.get("/v2/models/colour/versions/1").status_code == 200
    assert client.get("/v2/models/colour/ready").status_code == 200


def test_a_model_with_no_live_worker_is_not_ready(colour_apps, module_redis):
    app = colour_apps(worker=False)
    queue = RedisQueue(module_redis, app.config["QUEUE_NAME"])
    pretend_worker(
        module_redis, queue.name, "gone", Heartbeat(ModelInfo("colour", (32, 32), 3), "h", 1, 8), ttl=60
    )
    queue.sign_off("gone")  # scaled to zero: the model it served is still known
    Catalogue(module_redis, queue.name).retire("colour", "1")
    client = app.test_client()
    assert client.get("/v2/models/colour").status_code == 200
    for path in ("/v2/health/ready", "/v2/models/colour/ready"):
        response = client.get(path)
        assert response.status_code == 503 and set(response.json) == {"error"}, path
    module_redis.delete(*Catalogue(module_redis, queue.name).all_keys())


def test_unknown_models_and_paths_are_404_in_the_protocols_shape(client):
    for path in ("/v2/models/resnet9000", "/v2/models/resnet9000/ready", "/v2/models/colour/versions/7"):
        response = client.get(path)
        assert response.status_code == 404 and set(response.json) == {"error"}, path
    response = client.post("/v2/models/nope/infer", json=infer_body(colour_image("red")))
    assert response.status_code == 404 and "Unknown model 'nope'" in response.json["error"]
    assert client.get("/v2/nowhere").json.keys() == {"error"}


def test_json_infer_returns_labels_probabilities_and_class_ids(client):
    colours = ["blue", "red"]
    response = client.post(
        "/v2/models/colour/infer", json=infer_body(*(colour_image(c) for c in colours), request_id="abc")
    )
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    body = response.json
    assert body["model_name"] == "colour" and body["id"] == "abc"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["labels"]["shape"] == [2, 2]  # the server's --top-k is 2
    assert outputs["labels"]["data"][0::2] == colours
    assert outputs["class_ids"]["data"][0::2] == [list(COLOURS).index(c) for c in colours]
    assert 0.5 < outputs["probabilities"]["data"][0] <= 1


def test_classification_extension_and_binary_outputs(client):
    body = infer_body(
        colour_image("green"),
        outputs=[
            {"name": "probabilities", "parameters": {"classification": 3, "binary_data": True}},
            {"name": "class_ids", "parameters": {"binary_data": True}},
        ],
    )
    response = client.post("/v2/models/colour/infer", json=body)
    assert response.status_code == 200
    outputs = binary_outputs(response)
    scores, score_bytes = outputs["probabilities"]
    assert scores["datatype"] == "BYTES" and scores["shape"] == [1, 3]
    strings = [s.decode() for s in read_bytes_tensor(score_bytes)]
    assert len(strings) == 3
    value, index, label = strings[0].split(":")
    assert label == "green" and index == "1" and 0 < float(value) <= 1
    ids, id_bytes = outputs["class_ids"]
    assert ids["datatype"] == "INT64" and len(id_bytes) == 3 * 8
    assert struct.unpack("<3q", id_bytes)[0] == 1


def test_binary_inputs_and_outputs_built_and_read_by_hand(client):
    images = [colour_image("red"), colour_image("blue")]
    data = bytes_tensor(images)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [2, 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    response = client.post(
        "/v2/models/colour/infer", data=header + data, headers={HEADER_LENGTH: str(len(header))}
    )
    assert response.status_code == 200, response.get_data()[:300]
    outputs = binary_outputs(response)
    labels, label_bytes = outputs["labels"]
    assert labels["shape"] == [2, 2]  # the server's --top-k is 2
    assert [label.decode() for label in read_bytes_tensor(label_bytes)][0::2] == ["red", "blue"]
    _, probability_bytes = outputs["probabilities"]
    probabilities = struct.unpack("<4f", probability_bytes)
    assert 0.5 < probabilities[0] <= 1 and probabilities[0] >= probabilities[1]
    _, id_bytes = outputs["class_ids"]
    assert struct.unpack("<4q", id_bytes)[0::2] == (0, 2)


@pytest.mark.parametrize(
    "body, words",
    [
        (b"{nope", "not valid JSON"),
        (
            orjson.dumps({"inputs": [{"name": "pixels", "shape": [1], "datatype": "FP32", "data": [1]}]}),
            'named "image"',
        ),
        (
            orjson.dumps(
                {"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": ["aGk="]}]}
            ),
            "holds 2 elements",
        ),
        (
            orjson.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%"]}]}),
            "not valid base64",
        ),
        (
            orjson.dumps(
                {
                    "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}],
                    "outputs": [{"name": "logits"}],
                }
            ),
            "Unknown output 'logits'",
        ),
        (
            orjson.dumps(
                {
                    "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}],
                    "parameters": {"top_k": 99},
                }
            ),
            "this model has 3 classes",
        ),
        (
            orjson.dumps(
                {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}]}
            ),
            "not an image",
        ),
    ],
)
def test_bad_inference_requests_are_400_in_the_protocols_shape(client, module_redis, colour_app, body, words):
    response = client.post("/v2/models/colour/infer", data=body, content_type="application/json")
    assert response.status_code == 400 and set(response.json) == {"error"}
    assert words in response.json["error"]
    assert leftover_keys(module_redis, colour_app.config["QUEUE_NAME"]) == []


def test_a_binary_tensor_cut_short_is_a_400(client):
    image = colour_image("red")
    for data, words in (
        (struct.pack("<I", len(image)) + image[:-10], "ends inside an element"),  # the bytes run out
        (bytes_tensor([image]) + b"\x01\x00", "ends inside an element's length"),  # half a length
    ):
        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "shape": [1],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(data)},
                    }
                ]
            }
        )
        response = client.post(
            "/v2/models/colour/infer", data=header + data, headers={HEADER_LENGTH: str(len(header))}
        )
        assert response.status_code == 400 and words in response.json["error"], words


@pytest.mark.slow
def test_a_real_triton_client_against_the_live_server(colour_server):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(colour_server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("colour")
    metadata = client.get_model_metadata("colour")
    assert metadata["inputs"][0] == {"name": "image", "datatype": "BYTES", "shape": [-1]}
    images = [colour_image(c, fmt="JPEG") for c in ("green", "red", "blue")]
    by_predict = [colour_server.predict(image).json()["predictions"][0]["label"] for image in images]
    for binary in (True, False):
        tensor = triton.InferInput("image", [len(images)], "BYTES")
        elements = images if binary else [base64.b64encode(image) for image in images]
        tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
        outputs = [
            triton.InferRequestedOutput("labels", binary_data=binary),
            triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=2),
        ]
        result = client.infer("colour", [tensor], outputs=outputs)
        labels = [
            row[0].decode() if isinstance(row[0], bytes) else row[0] for row in result.as_numpy("labels")
        ]
        assert labels == by_predict == ["green", "red", "blue"], binary
        top = result.as_numpy("probabilities")[0][0]
        assert (top.decode() if isinstance(top, bytes) else top).endswith(":1:green")
    with pytest.raises(Exception, match="Unknown model"):
        client.get_model_metadata("not-this-one")
