"""Every way a client sends images to /predict, in-process against a real redis-server and a real
worker thread serving the colour model."""

from __future__ import annotations

import base64
import io

import pytest

from .support import COLOURS, colour_image, leftover_keys


@pytest.fixture(scope="module")
def app(colour_app):
    return colour_app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def redis_client(module_redis):
    return module_redis


@pytest.fixture(scope="module")
def Q(app):
    return app.config["QUEUE_NAME"]


def top(body: dict) -> str:
    return body["predictions"][0]["label"]


def multipart(*images: bytes, **fields) -> dict:
    return {
        "data": {"image": [(io.BytesIO(data), f"{i}.png") for i, data in enumerate(images)], **fields},
        "content_type": "multipart/form-data",
    }


def test_the_same_image_in_every_shape_gets_the_same_predictions(client):
    jpeg = colour_image("green", size=(80, 60), fmt="JPEG")
    encoded = base64.b64encode(jpeg).decode()
    answers = [
        client.post("/predict", **multipart(jpeg)),
        client.post("/predict", data=jpeg, content_type="image/jpeg"),
        client.post("/predict", data=jpeg, content_type="application/octet-stream"),
        client.post("/predict", json={"image": encoded}),
        client.post("/predict", json={"image": "data:image/jpeg;base64," + encoded}),
        client.post("/predict", json={"image": base64.urlsafe_b64encode(jpeg).decode().rstrip("=")}),
    ]
    assert [a.status_code for a in answers] == [200] * len(answers), [a.json for a in answers]
    predictions = [a.json["predictions"] for a in answers]
    assert all(p == predictions[0] for p in predictions) and predictions[0][0]["label"] == "green"
    listed = client.post("/predict", json={"images": [encoded]})
    assert listed.json["results"][0]["predictions"] == predictions[0]


def test_several_images_come_back_in_order_each_its_own(client, redis_client, Q):
    colours = ["red", "blue", "green"]
    response = client.post("/predict", **multipart(*(colour_image(c, seed=i) for i, c in enumerate(colours))))
    assert response.status_code == 200
    results = response.json["results"]
    assert [top(result) for result in results] == colours
    assert response.json["request_id"] and "total" in response.json["timings_ms"]
    as_json = client.post(
        "/predict", json={"images": [base64.b64encode(colour_image(c)).decode() for c in colours]}
    )
    assert [top(result) for result in as_json.json["results"]] == colours
    assert leftover_keys(redis_client, Q) == []


def test_top_k_from_the_form_the_query_or_json(client):
    image = colour_image("red")
    assert len(client.post("/predict", **multipart(image)).json["predictions"]) == 2  # the server's --top-k
    assert len(client.post("/predict", **multipart(image, top_k="1")).json["predictions"]) == 1
    assert len(client.post("/predict?top_k=3", **multipart(image)).json["predictions"]) == 3
    assert len(client.post("/predict?top_k=3", data=image, content_type="image/png").json["predictions"]) == 3
    encoded = base64.b64encode(image).decode()
    assert len(client.post("/predict", json={"image": encoded, "top_k": 1}).json["predictions"]) == 1


@pytest.mark.parametrize(
    "request_kwargs, status, words",
    [
        ({"json": {"image": "not base64 at all!"}}, 400, "not valid base64"),
        ({"data": b"{not json", "content_type": "application/json"}, 400, "not valid JSON"),
        ({"json": {"images": []}}, 400, "carries no image"),
        ({"json": {"images": "abc"}}, 400, "must be a list"),
        ({"json": {"pictures": []}}, 400, '"images"'),
        ({"json": {"image": 7}}, 400, "must be a base64 string"),
        ({"json": {"images": ["aGVsbG8="] * 5}}, 400, "5 images; the limit is 4"),
        ({"json": {"image": "aGVsbG8=", "top_k": 0}}, 400, "top_k must be a whole number"),
        ({"json": {"image": "aGVsbG8=", "top_k": "many"}}, 400, "top_k must be a whole number"),
        ({"json": {"image": "aGVsbG8=", "top_k": 4}}, 400, "this model has 3 classes"),
        (
            {"data": b"a=1", "content_type": "application/x-www-form-urlencoded"},
            415,
            "multipart/form-data, application/json",
        ),
        ({"data": b"<xml/>", "content_type": "text/xml"}, 415, "image/*"),
    ],
)
def test_bad_requests_get_a_clear_error_and_leave_nothing_behind(
    client, redis_client, Q, request_kwargs, status, words
):
    response = client.post("/predict", **request_kwargs)
    assert response.status_code == status, response.json
    assert response.json["success"] is False and words in response.json["error"]
    assert leftover_keys(redis_client, Q) == []


def test_one_unreadable_image_fails_the_request_by_its_number_before_anything_is_queued(
    client, redis_client, Q
):
    response = client.post(
        "/predict", **multipart(colour_image("red"), b"not an image", colour_image("blue"))
    )
    assert response.status_code == 400
    assert response.json["error"].startswith("Image 2 of 3: The uploaded file is not an image")
    assert leftover_keys(redis_client, Q) == []


def test_many_clients_mixing_single_and_multi_image_requests(app, redis_client, Q):
    from concurrent.futures import ThreadPoolExecutor

    names = list(COLOURS)

    def send(i):
        colours = [names[(i + j) % 3] for j in range(1 + i % 4)]
        data = [colour_image(c, seed=i * 10 + j) for j, c in enumerate(colours)]
        response = app.test_client().post("/predict", **multipart(*data))
        body = response.json
        got = [top(body)] if len(colours) == 1 else [top(result) for result in body["results"]]
        return colours, got, body["request_id"]

    with ThreadPoolExecutor(40) as pool:
        outcomes = list(pool.map(send, range(120)))
    assert all(colours == got for colours, got, _ in outcomes)
    assert len({request_id for _, _, request_id in outcomes}) == 120
    assert leftover_keys(redis_client, Q) == []
